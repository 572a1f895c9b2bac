//! The node's own requests to PBXs, one task per trunk:
//!
//! - **health**: OPTIONS to each outbound trunk's PBX every
//!   `options_interval_s`; two failures in a row (no answer, a transport
//!   error, a 5xx) mark it down — logged, written to `trunk_health`, and
//!   skipped by outbound calls while another trunk is up — and the first
//!   answer marks it up again;
//! - **registration**: a cloud-PBX trunk (`register = true`) is registered
//!   by one node of the fleet at a time. The node holding the claim in
//!   `trunk_registrations` renews it every [`CLAIM_RENEW`]; a node that
//!   dies stops renewing and another takes the trunk over within
//!   [`CLAIM_TTL`]. The registration itself is the sans-IO
//!   [`Registration`] machine; this task only carries its requests (through
//!   core 0, as client transactions) and its timers, and writes its state.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{ShardMsg, Shared};
use crate::b2bua::outbound::OutboundTrunk;
use crate::sip::message::{HeaderName, Method, Request, Response, Uri};
use crate::sip::registration::{RegState, Registration, RegistrationConfig};
use crate::transport::{Target, Transports};

/// How long a node's claim on a registration lives unless renewed.
pub const CLAIM_TTL: Duration = Duration::from_secs(30);
/// How often the claim is renewed.
pub const CLAIM_RENEW: Duration = Duration::from_secs(10);
/// Failed pings in a row that mark a PBX down.
const DOWN_AFTER: u32 = 2;
/// The longest wait for a request's final answer (Timer F/B run out first).
const ANSWER_WAIT: Duration = Duration::from_secs(40);

/// Starts the tasks of every trunk that needs one.
pub(super) fn spawn(
    ctx: &Arc<Shared>,
    core: mpsc::Sender<ShardMsg>,
    transports: &Transports,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for t in ctx.trunks.outbound() {
        if !t.options_interval.is_zero() {
            tasks.push(tokio::spawn(health(ctx.clone(), core.clone(), transports.clone(), t.clone(), stop.clone())));
        }
        if t.registration.is_some() {
            tasks.push(tokio::spawn(register(ctx.clone(), core.clone(), transports.clone(), t.clone(), stop.clone())));
        }
    }
    tasks
}

/// Sends `request` to `target` through core 0; its final answer, or the
/// status of its failure (408 no answer, 503 transport).
async fn send(core: &mpsc::Sender<ShardMsg>, request: Request, target: Target) -> Result<Response, u16> {
    let (reply, rx) = oneshot::channel();
    if core.send(ShardMsg::Send { request, target, reply }).await.is_err() {
        return Err(503);
    }
    match tokio::time::timeout(ANSWER_WAIT, rx).await {
        Ok(Ok(r)) => r,
        _ => Err(408),
    }
}

fn call_id(ctx: &Shared, what: &str) -> String {
    crate::sip::shard::b_leg_call_id(0, &format!("{what}{}", ctx.new_tag().replace('.', "")))
}

/// Our address toward `target` (the Contact and From host).
fn local(transports: &Transports, target: &Target) -> std::net::SocketAddr {
    transports
        .local_for(target.transport, target.addr)
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 5060)))
}

async fn health(
    ctx: Arc<Shared>,
    core: mpsc::Sender<ShardMsg>,
    transports: Transports,
    trunk: Arc<OutboundTrunk>,
    stop: CancellationToken,
) {
    let target = Target { transport: trunk.transport, addr: trunk.addr, conn: None };
    let Ok(uri) = Uri::parse(&format!("sip:{}:{}{}", trunk.host, trunk.port, trunk.transport.uri_param())) else {
        return;
    };
    let from_tag = ctx.new_tag();
    let cid = call_id(&ctx, "opt");
    let mut seq: u32 = 0;
    let mut failures: u32 = 0;
    let mut up = true;
    let mut since = super::unix_now_i64();
    let mut next_ping = tokio::time::Instant::now();
    loop {
        seq += 1;
        next_ping += trunk.options_interval;
        let me = local(&transports, &target);
        let req = Request::builder(Method::Options, uri.clone())
            .header(HeaderName::MaxForwards, "70")
            .header(HeaderName::From, format!("<sip:trunkgate@{me}>;tag={from_tag}"))
            .header(HeaderName::To, format!("<{uri}>"))
            .header(HeaderName::CallId, &cid)
            .header(HeaderName::CSeq, format!("{seq} OPTIONS"))
            .header(HeaderName::Accept, "application/sdp")
            .header(HeaderName::UserAgent, crate::sip::PRODUCT)
            .build();
        let Ok(req) = req else { return };
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            a = send(&core, req, target) => a,
        };
        // Any answer but a server failure means the PBX is there (a 404 or
        // 405 to OPTIONS is still a PBX answering).
        let (ok, detail) = match &answer {
            Ok(r) if r.status() < 500 => (true, format!("{} {}", r.status(), r.reason_lossy())),
            Ok(r) => (false, format!("{} {}", r.status(), r.reason_lossy())),
            Err(408) => (false, "no answer".to_owned()),
            Err(s) => (false, format!("transport error ({s})")),
        };
        failures = if ok { 0 } else { failures + 1 };
        let now_up = if up { failures < DOWN_AFTER } else { ok };
        let now = super::unix_now_i64();
        if now_up != up {
            up = now_up;
            since = now;
            if up {
                info!(trunk = %trunk.name, target = %trunk.addr, %detail, "trunk up");
            } else {
                warn!(trunk = %trunk.name, target = %trunk.addr, %detail, "trunk down: outbound calls skip it");
            }
            if let Ok(mut down) = ctx.trunks_down.lock() {
                if up {
                    down.remove(&trunk.name);
                } else {
                    down.insert(trunk.name.clone());
                }
            }
        }
        let _ = ctx.store.set_trunk_health(&trunk.name, &ctx.config.node_id, up, since, Some(&detail), now).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next_ping) => {}
        }
    }
}

async fn register(
    ctx: Arc<Shared>,
    core: mpsc::Sender<ShardMsg>,
    transports: Transports,
    trunk: Arc<OutboundTrunk>,
    stop: CancellationToken,
) {
    let Some(reg) = trunk.registration.clone() else { return };
    let target = Target { transport: reg.transport, addr: reg.addr, conn: None };
    let node = ctx.config.node_id.clone();
    let Ok(registrar) = Uri::parse(&format!("sip:{}:{}{}", reg.host, reg.port, reg.transport.uri_param())) else {
        return;
    };
    let mut machine: Option<Registration> = None;
    let mut last_written = String::new();
    let mut next_claim = tokio::time::Instant::now();
    loop {
        // The claim: renewed while held; a node without it stands by.
        if tokio::time::Instant::now() >= next_claim {
            next_claim = tokio::time::Instant::now() + CLAIM_RENEW;
            let now = super::unix_now_i64();
            let ttl = i64::try_from(CLAIM_TTL.as_secs()).unwrap_or(30);
            match ctx.store.claim_registration(&trunk.name, &node, now, now + ttl).await {
                Ok(true) if machine.is_none() => {
                    info!(trunk = %trunk.name, "registration claimed by this node");
                    let me = local(&transports, &target);
                    let mut seed = [0u8; 8];
                    let _ = getrandom::fill(&mut seed);
                    let mut m = Registration::new(RegistrationConfig {
                        registrar: registrar.clone(),
                        aor: reg.aor.clone(),
                        contact: format!("sip:{}@{me}{}", reg.contact_user, reg.transport.uri_param()),
                        expires: trunk_expiry(&trunk),
                        credentials: trunk.credentials.clone(),
                        call_id: call_id(&ctx, "reg"),
                        from_tag: ctx.new_tag(),
                        seed: u64::from_le_bytes(seed),
                        backoff: reg.retry,
                    });
                    m.start(crate::clock::instant());
                    machine = Some(m);
                    last_written.clear();
                }
                Ok(true) => {}
                Ok(false) => {
                    if machine.take().is_some() {
                        warn!(trunk = %trunk.name, "registration claim lost to another node");
                    }
                }
                Err(e) => warn!(trunk = %trunk.name, error = %e, "registration claim not renewed"),
            }
        }
        // The machine's requests, one at a time.
        if let Some(m) = machine.as_mut() {
            while let Some(req) = m.poll_request() {
                let answer = tokio::select! {
                    _ = stop.cancelled() => break,
                    a = send(&core, req, target) => a,
                };
                let now = crate::clock::instant();
                match answer {
                    Ok(r) => m.handle_response(now, &r),
                    Err(status) => m.handle_failure(now, status),
                }
            }
            let (state, detail) = describe(m.state());
            // What changes the row: not the countdowns.
            let line = match m.state() {
                RegState::Registered { expires, .. } => format!("registered {}", expires.as_secs()),
                RegState::Failed { status, failures, .. } => format!("failed {status} {failures}"),
                other => other.name().to_owned(),
            };
            if line != last_written {
                match m.state() {
                    RegState::Failed { .. } => {
                        warn!(trunk = %trunk.name, state, detail = detail.as_deref().unwrap_or(""), "registration")
                    }
                    _ => info!(trunk = %trunk.name, state, detail = detail.as_deref().unwrap_or(""), "registration"),
                }
                let now = super::unix_now_i64();
                let _ = ctx.store.set_registration_state(&trunk.name, &node, state, detail.as_deref(), now).await;
                last_written = line;
            }
        }
        if stop.is_cancelled() {
            break;
        }
        let wake = machine
            .as_ref()
            .and_then(Registration::poll_timeout)
            .map(tokio::time::Instant::from_std)
            .map_or(next_claim, |t| t.min(next_claim));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(wake) => {
                if let Some(m) = machine.as_mut() {
                    m.handle_timeout(crate::clock::instant());
                }
            }
        }
    }
    // Stopping: remove the binding, give the claim up for another node.
    if let Some(mut m) = machine {
        m.stop(crate::clock::instant());
        if let Some(req) = m.poll_request() {
            let _ = tokio::time::timeout(Duration::from_secs(2), send(&core, req, target)).await;
        }
        let _ = ctx.store.release_registration(&trunk.name, &node).await;
        info!(trunk = %trunk.name, "registration released");
    }
}

fn trunk_expiry(t: &OutboundTrunk) -> Duration {
    t.registration.as_ref().map_or(Duration::from_secs(3600), |r| r.expires)
}

/// The state's name and what to show beside it.
fn describe(s: &RegState) -> (&'static str, Option<String>) {
    let now = crate::clock::instant();
    let secs = |t: std::time::Instant| t.saturating_duration_since(now).as_secs();
    let detail = match s {
        RegState::Registered { expires, refresh_at, .. } => {
            Some(format!("expires {} s, refresh in {} s", expires.as_secs(), secs(*refresh_at)))
        }
        RegState::Failed { status, reason, retry_at, failures } => {
            Some(format!("{status} {reason}; {failures} failure(s); next try in {} s", secs(*retry_at)))
        }
        _ => None,
    };
    (s.name(), detail)
}
