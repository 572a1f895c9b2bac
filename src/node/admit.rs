//! The admission of one INVITE from a trunk, in DESIGN.md's order: the
//! licence rules on the cached snapshot (no database round trip), the
//! route and its reachable users (in memory, plus the users' rows), then
//! the channel, taken atomically with its lease in one database
//! transaction.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use super::Shared;
use super::calls::{AdmissionResult, ForkTarget};
use crate::admission::{self, CallRequest, Decision, Reason, Refusal, UserInfo};
use crate::b2bua::{Trunk, dialled_number};
use crate::registrar::Aor;
use crate::sip::message::{Request, Uri};
use crate::sip::transaction::TsxKey;
use crate::store::{CallRecord, LeaseOutcome, StoreError};
use crate::transport::{Target, Transport};

/// How long a lease lives without renewal; the node renews every third.
pub const LEASE_TTL: Duration = Duration::from_secs(60);

/// Inputs of one admission, gathered by the core.
pub(crate) struct AdmitInput {
    pub key: TsxKey,
    pub request: Request,
    pub trunk: Arc<Trunk>,
    pub node_overloaded: bool,
    pub calls_this_second: u32,
    pub source: SocketAddr,
}

/// A refused INVITE: its status comes from `[admission.answers]`
/// ([`crate::admission::RefusalAnswers`]), the one place refusal codes are
/// chosen.
pub(crate) fn refuse(
    ctx: &Shared,
    key: TsxKey,
    reason: Reason,
    detail: String,
    mut record: CallRecord,
) -> AdmissionResult {
    let answer = ctx.config.answers.answer_refusal(&crate::admission::Refusal { reason, detail });
    record.outcome = crate::cdr::Outcome::Refused.as_str().into();
    record.sip_status = Some(i64::from(answer.status));
    record.reason = Some(reason.as_str().to_owned());
    AdmissionResult::Refuse { key, reason, answer, record }
}

/// The caller's number: From's user part (decoded), or `anonymous`.
pub(crate) fn caller_of(req: &Request) -> Option<String> {
    req.headers().from().ok().and_then(|f| match f.uri() {
        Uri::Sip(s) => s.user_decoded().map(|u| String::from_utf8_lossy(&u).into_owned()),
        Uri::Tel(t) => Some(t.number().to_owned()),
        _ => None,
    })
}

/// An inbound call attempt's record as admission starts it, and the
/// dialled number: shared by admission and by overload shedding, so a
/// shed call is recorded as any other refusal.
fn inbound_record(ctx: &Shared, request: &Request, trunk: &Trunk) -> (Option<String>, CallRecord) {
    // A call to a cloud-PBX trunk's registered Contact names us in the
    // Request-URI: the dialled number is elsewhere (To, Diversion).
    let to_contact =
        trunk.contact_user.as_deref().is_some_and(|c| request.uri().as_sip().and_then(|s| s.user()) == Some(c));
    let sources: Vec<crate::config::NumberSource> = if to_contact {
        let rest: Vec<_> =
            trunk.number_from.iter().copied().filter(|s| *s != crate::config::NumberSource::RequestUri).collect();
        if rest.is_empty() { vec![crate::config::NumberSource::To] } else { rest }
    } else {
        trunk.number_from.clone()
    };
    let number = dialled_number(request, &sources).map(|d| d.number);
    let record = CallRecord {
        id: 0,
        call_id: request.headers().call_id().unwrap_or("").to_owned(),
        node_id: ctx.config.node_id.clone(),
        portal_id: Some(trunk.portal.as_str().to_owned()),
        trunk: Some(trunk.name.clone()),
        direction: "inbound".into(),
        caller: caller_of(request),
        callee: number.clone(),
        target_user: None,
        started_at: crate::clock::now_utc().timestamp(),
        answered_at: None,
        ended_at: None,
        outcome: String::new(),
        sip_status: None,
        reason: None,
        media: None,
    };
    (number, record)
}

/// The portal a trunk's call is for: a shared trunk (`portal = "*"`)
/// belongs to the portal owning the Request-URI's domain; every other trunk
/// to its configured portal id. The id is `@<domain>` when no portal has
/// the domain (rate-counted by it, refused as not found).
fn portal_for(
    snapshot: &crate::licences::Snapshot,
    trunk: &Trunk,
    request: &Request,
) -> (crate::admission::PortalId, Option<Arc<crate::admission::PortalSnapshot>>) {
    if trunk.portal.as_str() == "*" {
        let domain = match request.uri() {
            Uri::Sip(u) => u.host_str().trim_end_matches('.').to_owned(),
            _ => String::new(),
        };
        match snapshot.portal_by_domain(&domain) {
            Some(p) => (p.id.clone(), Some(p.clone())),
            None => (crate::admission::PortalId::new(format!("@{domain}")), None),
        }
    } else {
        (trunk.portal.clone(), snapshot.portal(&trunk.portal).cloned())
    }
}

/// Why a call shed by overload control was refused (its Warning text).
pub(crate) const SHED_DETAIL: &str = "node is shedding load: calls queue too long";

/// A trunk's INVITE shed by overload control (`overload.rs`): refused as
/// `overloaded` without going through admission, recorded like any
/// refusal.
pub(crate) fn shed(ctx: &Shared, key: TsxKey, request: &Request, trunk: &Trunk) -> AdmissionResult {
    let (_, mut record) = inbound_record(ctx, request, trunk);
    let (_, portal) = portal_for(&ctx.cache.get(), trunk, request);
    record.portal_id = portal.map(|p| p.id.as_str().to_owned());
    refuse(ctx, key, Reason::Overloaded, SHED_DETAIL.into(), record)
}

/// Decides on one INVITE.
pub(crate) async fn admit(ctx: Arc<Shared>, input: AdmitInput) -> AdmissionResult {
    let AdmitInput { key, request, trunk, node_overloaded, calls_this_second, source } = input;
    let now = crate::clock::now_utc();
    let a_call_id = request.headers().call_id().unwrap_or("").to_owned();
    let (number, mut record) = inbound_record(&ctx, &request, &trunk);

    // Rows 2-5 on the cached snapshot, and row 7's verdict held back until
    // row 6 (the channel count) has run.
    let snapshot = ctx.cache.get();
    let (portal_id, portal) = portal_for(&snapshot, &trunk, &request);
    record.portal_id = portal.as_ref().map(|p| p.id.as_str().to_owned());
    let call = CallRequest { portal: portal_id, node_overloaded };
    let awaiting = match admission::decide_licence_untraced(&call, portal.as_deref(), calls_this_second, now) {
        Ok(awaiting) => awaiting,
        Err(decision) => {
            // `decide_licence` fails only with a refusal; the fallback is
            // the safe answer if that ever changed.
            let refusal = decision
                .refusal()
                .cloned()
                .unwrap_or_else(|| Refusal { reason: Reason::PortalNotFound, detail: "no such portal".into() });
            return refuse(&ctx, key, refusal.reason, refusal.detail, record);
        }
    };
    let channels = awaiting.channels();
    let Some(portal) = portal else {
        return refuse(&ctx, key, Reason::PortalNotFound, "no such portal".into(), record);
    };
    let lease_id = [ctx.config.node_id.as_str(), "/", trunk.name.as_str(), "/", a_call_id.as_str()].concat();

    // Row 8: the route and who can be rung. Checked before the lease is
    // taken (a refused call must not hold a channel even briefly); if the
    // portal is busy or over its rate anyway, that is the answer, as the
    // table orders.
    let route = number.as_deref().and_then(|n| trunk.route(n));
    let mut groups: Vec<Vec<ForkTarget>> = Vec::new();
    let mut why_unreachable = String::new();
    if let Some(route) = route {
        let at = crate::node::unix_now();
        for user in route.users_for_call() {
            let cached = snapshot.user(&portal.id, &user).cloned();
            let row = match cached {
                Some(r) => r,
                // Not in the cache: maybe added a moment ago.
                // Boxed, as the other database waits here: an awaited
                // future is held inline in this one's state, and this
                // state is moved (copied) whole when the admission is
                // started and at each nested call; sqlx's futures made it
                // kilobytes (about 50,000 instructions of copying per
                // call) for paths a single node's admitted call never takes.
                None => match Box::pin(ctx.store.user(portal.id.as_str(), &user)).await {
                    Ok(Some(u)) => crate::store::UserBrief {
                        portal_id: u.portal_id,
                        username: u.username,
                        extranet: u.extranet,
                        disabled: u.disabled,
                        static_contact: u.static_contact,
                    },
                    Ok(None) | Err(_) => {
                        why_unreachable = format!("user {user} does not exist");
                        continue;
                    }
                },
            };
            if !admission::may_target(&portal, &UserInfo { extranet: row.extranet, disabled: row.disabled }) {
                why_unreachable = format!("user {user} may not be called");
                continue;
            }
            let aor = Aor { portal: portal.id.clone(), user: user.clone() };
            let mut group: Vec<ForkTarget> = ctx
                .location
                .lock()
                .map(|l| l.lookup(&aor, at))
                .unwrap_or_default()
                .into_iter()
                .map(|b| ForkTarget {
                    user: user.clone(),
                    contact: b.contact,
                    target: Target { transport: b.source.transport, addr: b.source.addr, conn: None },
                })
                .collect();
            if let Some(contact) = row.static_contact.as_deref()
                && let Some(t) = static_target(contact)
            {
                group.push(ForkTarget { user: user.clone(), contact: contact.to_owned(), target: t });
            }
            if group.is_empty() {
                // The cache may be a moment behind a contact just set: ask
                // the database before calling the user unreachable (only on
                // this rare path, never per admitted call).
                if let Ok(Some(fresh)) = Box::pin(ctx.store.user(portal.id.as_str(), &user)).await
                    && !fresh.disabled
                    && let Some(contact) = fresh.static_contact.as_deref()
                    && let Some(t) = static_target(contact)
                {
                    group.push(ForkTarget { user: user.clone(), contact: contact.to_owned(), target: t });
                }
            }
            if group.is_empty() {
                why_unreachable = format!("user {user} is not registered");
            } else {
                groups.push(group);
            }
        }
    }
    if awaiting.rate_refusal().is_some() || route.is_none() || groups.is_empty() {
        // Refused whatever the channel count: count the channels without
        // taking one, so rows 6 and 7 answer in the table's order.
        let active = match Box::pin(active_calls(&ctx, portal.id.as_str(), now)).await {
            Ok(active) => active,
            Err(e) => {
                warn!(error = %e, "database unavailable during admission");
                return refuse(&ctx, key, Reason::DatabaseUnavailable, "shared database unreachable".into(), record);
            }
        };
        if let Decision::Refuse { refusal, .. } = awaiting.decide(active) {
            return refuse(&ctx, key, refusal.reason, refusal.detail, record);
        }
        return match (route, &number) {
            (None, Some(n)) => refuse(&ctx, key, Reason::NoRoute, format!("no route for {n}"), record),
            (None, None) => refuse(&ctx, key, Reason::NoRoute, "no dialled number".into(), record),
            (Some(_), _) => refuse(&ctx, key, Reason::Unavailable, why_unreachable, record),
        };
    }

    // Row 6: the channel (row 7 passed: the rate was under its limit).
    if let Err((reason, detail)) = take_channel(&ctx, portal.id.as_str(), channels, &lease_id, now).await {
        return refuse(&ctx, key, reason, detail, record);
    }
    debug!(portal = %portal.id, trunk = %trunk.name, %source, "call admitted");
    let Some(route) = route else {
        return refuse(&ctx, key, Reason::NoRoute, "no route".into(), record);
    };
    AdmissionResult::Admit {
        key,
        groups,
        strategy: route.strategy,
        ring_timeout: Duration::from_secs(u64::from(route.ring_timeout_s)),
        max_duration: Duration::from_secs(u64::from(portal.max_call_duration_s.max(1))),
        lease_id,
        domain: portal.domain.clone(),
        record,
        invite: request,
    }
}

/// Row 6: takes one of the portal's `channels` for lease `lease_id`, or
/// says why not. The node counts (see [`super::channels`]) and records the
/// lease behind, in order with its release. Inbound and outbound calls
/// share the count.
pub(crate) async fn take_channel(
    ctx: &Shared,
    portal: &str,
    channels: u32,
    lease_id: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), (Reason, String)> {
    let admitted = ctx.channels.take(portal, channels, now).await;
    if let Ok(LeaseOutcome::Admitted { .. }) = admitted {
        let at = now.timestamp();
        let _ = ctx.lease_ops.send(crate::store::LeaseOp::Take {
            call_id: lease_id.to_owned(),
            portal: portal.to_owned(),
            node_id: ctx.config.node_id.clone(),
            acquired_at: at,
            expires_at: at + i64::try_from(LEASE_TTL.as_secs()).unwrap_or(60),
        });
    }
    match admitted {
        Ok(LeaseOutcome::Admitted { .. }) => Ok(()),
        Ok(LeaseOutcome::Busy { active }) => {
            Err((Reason::ChannelsBusy, format!("{active} of {channels} channels busy")))
        }
        // Saturated, not gone: overload, shed like any (the PBX may try
        // another node, which may have connections to spare).
        Err(e) if ctx.store.is_saturated(&e) => {
            warn!(error = %e, "database saturated during admission: call shed as overloaded");
            Err((Reason::Overloaded, "shared database saturated: no connection free in time".into()))
        }
        Err(e) if e.is_unavailable() => {
            warn!(error = %e, "database unavailable during admission");
            Err((Reason::DatabaseUnavailable, "shared database unreachable".into()))
        }
        Err(crate::store::StoreError::NotFound { .. }) => {
            Err((Reason::PortalNotFound, "portal removed from the database".into()))
        }
        Err(e) => {
            warn!(error = %e, "call refused: lease not taken");
            Err((Reason::Unavailable, "call could not be admitted".into()))
        }
    }
}

/// The portal's calls in progress, counted without taking a channel: in
/// memory on a single node, in the database for a fleet.
pub(crate) async fn active_calls(
    ctx: &Shared,
    portal: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<u32, StoreError> {
    if ctx.channels.is_fleet() {
        Box::pin(ctx.store.active_calls(portal, now)).await
    } else {
        Ok(ctx.channels.in_use(portal))
    }
}

/// A static contact `sip:user@IP:PORT[;transport=tcp]` → where to send.
/// Host names are not resolved: static contacts must be IP addresses.
fn static_target(contact: &str) -> Option<Target> {
    let uri = Uri::parse(contact).ok()?;
    let sip = uri.as_sip()?;
    let ip: std::net::IpAddr = sip.host_str().trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    let transport =
        if sip.transport().is_some_and(|t| t.eq_ignore_ascii_case("tcp")) { Transport::Tcp } else { Transport::Udp };
    Some(Target { transport, addr: SocketAddr::new(ip, sip.port().unwrap_or(5060)), conn: None })
}
