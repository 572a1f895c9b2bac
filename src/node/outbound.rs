//! The admission of a portal user's outgoing call (issue 10): the user is
//! authenticated by digest (407, as REGISTER is with 401, lockout
//! included), then the same rules in the same order as an inbound call —
//! licence, channels (shared with the portal's inbound calls), rate — then
//! the user's outbound permission and the portal's outbound trunks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use super::Shared;
use super::admit::{active_calls, caller_of, refuse, take_channel};
use super::calls::{AdmissionResult, OutboundAttempt};
use super::register::{Challenge, authenticate};
use crate::admission::{self, CallRequest, Decision, PortalSnapshot, Reason, Refusal};
use crate::b2bua::outbound::Permission;
use crate::config::NumberSource;
use crate::sip::message::{HeaderName, Request};
use crate::sip::transaction::TsxKey;
use crate::store::CallRecord;
use crate::transport::Target;

/// Inputs of one outbound admission, gathered by the core.
pub(crate) struct OutboundInput {
    pub key: TsxKey,
    pub request: Request,
    pub portal: Arc<PortalSnapshot>,
    pub node_overloaded: bool,
    pub calls_this_second: u32,
    pub source: SocketAddr,
}

/// The portal a non-trunk INVITE names: its From's domain (a portal
/// user's phone or browser puts its AOR there). Not the Request-URI's: a
/// scanner dialling `sip:NUMBER@portal-domain` from elsewhere is no user
/// (with `unknown_trunk = "ignore"` it gets no answer at all).
pub(crate) fn portal_of(ctx: &Shared, req: &Request) -> Option<Arc<PortalSnapshot>> {
    let snapshot = ctx.cache.get();
    let from = req
        .headers()
        .from()
        .ok()
        .and_then(|f| f.uri().as_sip().map(|s| s.host_str().trim_end_matches('.').to_owned()))?;
    snapshot.portal_by_domain(&from).cloned()
}

/// Whether the caller hides their number: `Privacy: id` (or `header`,
/// `user`), or an anonymous From (RFC 3323 §4).
fn withheld(req: &Request) -> bool {
    let h = req.headers();
    let privacy = h.get_all(&HeaderName::Privacy).any(|v| {
        v.value_str().is_some_and(|s| {
            s.split(';').map(str::trim).any(|t| ["id", "header", "user"].iter().any(|p| t.eq_ignore_ascii_case(p)))
        })
    });
    let anonymous = h
        .from()
        .ok()
        .and_then(|f| f.uri().as_sip().and_then(|s| s.user().map(str::to_owned)))
        .is_some_and(|u| u.eq_ignore_ascii_case("anonymous"));
    privacy || anonymous
}

/// Decides on one outbound INVITE.
pub(crate) async fn admit(ctx: Arc<Shared>, input: OutboundInput) -> AdmissionResult {
    let OutboundInput { key, request, portal, node_overloaded, calls_this_second, source } = input;
    let now = crate::clock::now_utc();
    let unix = super::unix_now();
    // The caller: the From's user part, authenticated below.
    let Some(user) =
        request.headers().from().ok().and_then(|f| f.uri().as_sip().and_then(|s| s.user().map(str::to_owned)))
    else {
        let r = crate::sip::message::Response::from_request(&request, 403, "Forbidden");
        return AdmissionResult::Reply { key, response: Box::new(r) };
    };
    // The same challenge, lockout and security log as REGISTER, as a
    // proxy: 407. A challenge makes no call record (every call gets one).
    let row = match authenticate(&ctx, &request, source.ip(), &portal, &user, Challenge::Proxy, unix).await {
        Ok(row) => row,
        Err(response) => return AdmissionResult::Reply { key, response },
    };
    let number = crate::b2bua::dialled_number(&request, &[NumberSource::RequestUri]).map(|d| d.number);
    let a_call_id = request.headers().call_id().unwrap_or("").to_owned();
    let mut record = CallRecord {
        id: 0,
        call_id: a_call_id.clone(),
        node_id: ctx.config.node_id.clone(),
        portal_id: Some(portal.id.as_str().to_owned()),
        trunk: None,
        direction: "outbound".into(),
        caller: caller_of(&request),
        callee: number.clone(),
        target_user: Some(user.clone()),
        started_at: now.timestamp(),
        answered_at: None,
        ended_at: None,
        outcome: String::new(),
        sip_status: None,
        reason: None,
        media: None,
    };

    // Rows 2-5 (node load, portal, block, licence), then the channel and
    // the rate in the table's order: exactly as for an inbound call.
    let call = CallRequest { portal: portal.id.clone(), node_overloaded };
    let awaiting = match admission::decide_licence_untraced(&call, Some(&portal), calls_this_second, now) {
        Ok(awaiting) => awaiting,
        Err(decision) => {
            let refusal = decision
                .refusal()
                .cloned()
                .unwrap_or_else(|| Refusal { reason: Reason::PortalNotFound, detail: "no such portal".into() });
            return refuse(&ctx, key, refusal.reason, refusal.detail, record);
        }
    };
    let channels = awaiting.channels();

    // What only an outbound call has: the number, the user's permission,
    // the trunks. Checked before the lease (a refused call must not hold a
    // channel even briefly).
    let dialable = number.as_deref().filter(|n| crate::config::is_dialled_number(n));
    let permission = Permission::parse(&row.outbound).unwrap_or(Permission::None);
    // Trunks the pings found down are skipped while another is up.
    let mut trunks = ctx.trunks.outbound_for(&portal.id);
    if let Ok(down) = ctx.trunks_down.lock()
        && trunks.iter().any(|t| !down.contains(&t.name))
    {
        trunks.retain(|t| !down.contains(&t.name));
    }
    let early_refusal = if row.disabled {
        Some((Reason::NotPermitted, format!("user {user} is disabled")))
    } else if let Some(n) = dialable.filter(|n| !permission.allows(n)) {
        Some((Reason::NotPermitted, format!("user {user} may not call {n}")))
    } else if dialable.is_none() {
        Some((Reason::NoRoute, format!("`{}` is not a number", number.as_deref().unwrap_or(""))))
    } else if trunks.is_empty() {
        Some((Reason::NoRoute, format!("portal {} has no outbound trunk", portal.id)))
    } else {
        None
    };
    if awaiting.rate_refusal().is_some() || early_refusal.is_some() {
        let active = match active_calls(&ctx, portal.id.as_str(), now).await {
            Ok(active) => active,
            Err(e) => {
                warn!(error = %e, "database unavailable during admission");
                return refuse(&ctx, key, Reason::DatabaseUnavailable, "shared database unreachable".into(), record);
            }
        };
        if let Decision::Refuse { refusal, .. } = awaiting.decide(active) {
            return refuse(&ctx, key, refusal.reason, refusal.detail, record);
        }
        if let Some((reason, detail)) = early_refusal {
            if reason == Reason::NotPermitted {
                warn!(target: "security", source = %source, portal = %portal.id, user = %user, %detail, "outbound call not permitted");
            }
            return refuse(&ctx, key, reason, detail, record);
        }
    }
    let Some(number) = dialable.map(str::to_owned) else {
        return refuse(&ctx, key, Reason::NoRoute, "no number".into(), record);
    };

    let lease_id = format!("{}/outbound/{}", ctx.config.node_id, a_call_id);
    if let Err((reason, detail)) = take_channel(&ctx, portal.id.as_str(), channels, &lease_id, now).await {
        return refuse(&ctx, key, reason, detail, record);
    }

    let hidden = withheld(&request);
    let display = request
        .headers()
        .from()
        .ok()
        .and_then(|f| f.display_name().map(|d| d.text().into_owned()))
        .filter(|d| !d.is_empty());
    let attempts = trunks
        .iter()
        .map(|t| {
            let caller =
                row.outbound_number.clone().or_else(|| t.caller_number.clone()).unwrap_or_else(|| user.clone());
            let dialled = t.rules.apply(&number);
            let uri = t.uri(&dialled);
            let mut id = t.caller_headers(&caller, hidden, display.as_deref());
            // Through an outbound proxy: sent there, routed on by it.
            let target = match &t.proxy {
                Some((transport, addr, route)) => {
                    id.extra.push(("Route".to_owned(), route.clone()));
                    Target { transport: *transport, addr: *addr, conn: None }
                }
                None => Target { transport: t.transport, addr: t.addr, conn: None },
            };
            OutboundAttempt {
                trunk: t.name.clone(),
                to: format!("<{}>", uri.split(";transport").next().unwrap_or(&uri)),
                uri,
                from: id.from,
                extra: id.extra,
                target,
                credentials: t.credentials.clone(),
                invite_timeout: t.invite_timeout,
                answer_timeout: t.answer_timeout,
            }
        })
        .collect();
    record.trunk = trunks.first().map(|t| t.name.clone());
    debug!(portal = %portal.id, user = %user, %source, trunks = trunks.len(), "outbound call admitted");
    AdmissionResult::AdmitOutbound {
        key,
        attempts,
        max_duration: Duration::from_secs(u64::from(portal.max_call_duration_s.max(1))),
        lease_id,
        domain: portal.domain.clone(),
        record,
        invite: request,
    }
}
