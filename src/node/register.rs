//! REGISTER (RFC 3261 §10.3) for portal users: find the portal by domain,
//! authenticate with digest against the stored HA1, apply the licence rules
//! (portal state, extranet, the plan's user limit) and update the location
//! table. Every failure is logged as a security event with its source.

use tracing::{info, warn};

use super::{Shared, unix_now};
use crate::admission::{self, RegisterRefusal, UserInfo};
use crate::registrar::{Aor, ContactSpec, RegisterAction, RegisterError, RegisterRequest, Source};
use crate::sip::digest::{Algorithm, AuthFailure, DigestCredentials};
use crate::sip::message::{Contacts, HeaderName, Request, Response, Uri};

/// Answers one REGISTER.
pub(super) async fn handle(ctx: &Shared, req: &Request, source: Source) -> Response {
    let now = unix_now();
    let ip = source.addr.ip();
    let h = req.headers();

    // The AOR: To names the user; its host (or the Request-URI's) the portal.
    let Ok(to) = h.to() else { return plain(req, 400, "Bad To header") };
    let Some(to_uri) = to.uri().as_sip() else { return plain(req, 400, "To must be a SIP or SIPS AOR") };
    let Some(user) = to_uri.user().map(str::to_owned) else { return plain(req, 400, "To has no user part") };
    let to_host = to_uri.host_str().trim_end_matches('.').to_owned();
    let ruri_host = match req.uri() {
        Uri::Sip(u) => Some(u.host_str().trim_end_matches('.').to_owned()),
        _ => None,
    };
    let snapshot = ctx.cache.get();
    let Some(portal) = snapshot
        .portal_by_domain(&to_host)
        .or_else(|| ruri_host.as_deref().and_then(|d| snapshot.portal_by_domain(d)))
        .cloned()
    else {
        warn!(target: "security", source = %ip, domain = %to_host, "REGISTER for a domain we do not serve");
        return plain(req, 404, "Not Found");
    };

    let row = match authenticate(ctx, req, ip, &portal, &user, Challenge::Www, now).await {
        Ok(row) => row,
        Err(resp) => return *resp,
    };

    // The licence rules: portal state, disabled/extranet users, user limit.
    let info = UserInfo { extranet: row.extranet, disabled: row.disabled };
    let registered = ctx.location.lock().map(|l| l.registered_users(&portal.id, Some(&user), now)).unwrap_or(0);
    let at = crate::clock::now_utc();
    if let Err(refusal) = admission::may_register(&portal, &info, registered, at) {
        warn!(target: "security", source = %ip, portal = %portal.id, user = %user, reason = refusal.as_str(), "REGISTER refused by the licence rules");
        crate::ops::metrics::register_failed(refusal.as_str());
        let (code, phrase) = match refusal {
            RegisterRefusal::UserLimit { .. } => (403, "Forbidden"),
            _ => (403, "Forbidden"),
        };
        let mut r = plain(req, code, phrase);
        let _ = r.headers_mut().push(HeaderName::Warning, ctx.warning(&refusal.to_string()));
        return r;
    }

    // Contacts.
    let action = match h.contacts() {
        Err(_) => return plain(req, 400, "Bad Contact header"),
        Ok(Contacts::Star) => RegisterAction::RemoveAll,
        Ok(Contacts::List(list)) if list.is_empty() => RegisterAction::Fetch,
        Ok(Contacts::List(list)) => {
            let mut specs = Vec::with_capacity(list.len());
            for c in &list {
                let expires = match c.expires() {
                    None => None,
                    Some(Ok(v)) => Some(u64::from(v)),
                    // RFC 3261 §10.3: an unparsable expiry counts as the default.
                    Some(Err(_)) => None,
                };
                let q = c.q().and_then(Result::ok).map(|q| f32::from(q) / 1000.0);
                specs.push(ContactSpec { uri: c.uri().as_str().to_owned(), expires, q });
            }
            RegisterAction::Update(specs)
        }
    };
    let header_expires = h.expires().ok().flatten().map(u64::from);
    let call_id = h.call_id().unwrap_or("").to_owned();
    let cseq = h.cseq().map(|c| c.seq).unwrap_or(0);
    let aor = Aor { portal: portal.id.clone(), user: user.clone() };
    let applied = ctx.location.lock().map(|mut l| {
        l.apply(&aor, &RegisterRequest { action: &action, header_expires, call_id: &call_id, cseq, source }, now)
    });
    let bindings = match applied {
        Ok(Ok(b)) => b,
        Ok(Err(RegisterError::IntervalTooBrief { min_expires })) => {
            let mut r = plain(req, 423, "Interval Too Brief");
            let _ = r.headers_mut().push(HeaderName::MinExpires, min_expires.to_string());
            return r;
        }
        Ok(Err(e @ RegisterError::TooManyContacts { .. })) => {
            let mut r = plain(req, 403, "Forbidden");
            let _ = r.headers_mut().push(HeaderName::Warning, ctx.warning(&e.to_string()));
            return r;
        }
        Ok(Err(e)) => return plain(req, 400, &e.to_string()),
        Err(_) => return plain(req, 500, "Server Internal Error"),
    };
    if bindings.is_empty() {
        info!(portal = %portal.id, user = %user, source = %source.addr, "unregistered");
    } else {
        info!(portal = %portal.id, user = %user, source = %source.addr, contacts = bindings.len(), "registered");
    }
    let mut r = plain(req, 200, "OK");
    let hm = r.headers_mut();
    for b in &bindings {
        let _ = hm.push(HeaderName::Contact, format!("<{}>;expires={}", b.contact, b.remaining(now)));
    }
    let _ = hm.push(HeaderName::Date, at.format("%a, %d %b %Y %H:%M:%S GMT").to_string());
    r
}

/// Which challenge a request gets: 401 (a registrar, REGISTER) or 407 (a
/// proxy, INVITE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Challenge {
    /// 401 with WWW-Authenticate; credentials in Authorization.
    Www,
    /// 407 with Proxy-Authenticate; credentials in Proxy-Authorization.
    Proxy,
}

/// Digest authentication of portal user `user` of `portal` (realm: its
/// domain), with the lockout per (source, user) and per source: the user's
/// row when the request carries valid credentials, else the answer to send
/// (a challenge, 403 when locked out or for another user's credentials,
/// 400 for malformed ones, 503 when the database does not answer). Every
/// failure is a security log line.
pub(super) async fn authenticate(
    ctx: &Shared,
    req: &Request,
    ip: std::net::IpAddr,
    portal: &crate::admission::PortalSnapshot,
    user: &str,
    kind: Challenge,
    now: u64,
) -> Result<crate::store::UserRow, Box<Response>> {
    let method = req.method().as_str();
    let realm = portal.domain.as_str();
    let pair = (ip, user.to_owned());
    let locked = ctx
        .lockout
        .lock()
        .ok()
        .and_then(|l| l.locked(&pair, now))
        .or_else(|| ctx.lockout_source.lock().ok().and_then(|l| l.locked(&ip, now)));
    if let Some(left) = locked {
        match kind {
            Challenge::Www => {
                warn!(target: "security", source = %ip, portal = %portal.id, user = %user, seconds_left = left, "REGISTER from a locked-out source refused")
            }
            Challenge::Proxy => {
                warn!(target: "security", source = %ip, portal = %portal.id, user = %user, seconds_left = left, "INVITE from a locked-out source refused")
            }
        }
        let mut r = plain(req, 403, "Forbidden");
        let _ = r.headers_mut().push(HeaderName::Warning, ctx.warning("too many authentication failures"));
        return Err(Box::new(r));
    }

    // Credentials for our realm, if any.
    let h = req.headers();
    let list = match kind {
        Challenge::Www => h.authorization(),
        Challenge::Proxy => h.proxy_authorization(),
    };
    let creds = list.ok().and_then(|list| {
        list.iter()
            .filter(|a| a.scheme().eq_ignore_ascii_case("digest"))
            .filter_map(|a| {
                DigestCredentials::from_params(
                    a.params().iter().map(|p| (p.name, p.unquoted_value().map(|v| v.into_owned()).unwrap_or_default())),
                )
            })
            .find(|c| c.realm.eq_ignore_ascii_case(realm))
    });
    let Some(creds) = creds else { return Err(Box::new(challenge(ctx, req, realm, now, false, kind))) };
    if creds.username != user {
        warn!(target: "security", source = %ip, portal = %portal.id, user = %user, auth_user = %creds.username, method, "request with credentials of another user");
        return Err(Box::new(plain(req, 403, "Forbidden")));
    }

    let row = match ctx.store.user(portal.id.as_str(), user).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, method, "database unavailable during authentication");
            let mut r = plain(req, 503, "Service Unavailable");
            let _ = r.headers_mut().push(HeaderName::RetryAfter, "5");
            return Err(Box::new(r));
        }
    };
    let verdict = {
        let Ok(mut auth) = ctx.auth.lock() else { return Err(Box::new(plain(req, 500, "Server Internal Error"))) };
        auth.verify(
            &creds,
            method,
            realm,
            |alg| {
                row.as_ref().map(|r| match alg {
                    Algorithm::Md5 => r.ha1_md5.clone(),
                    Algorithm::Sha256 => r.ha1_sha256.clone(),
                })
            },
            now,
        )
    };
    match verdict {
        Ok(_) => {}
        Err(AuthFailure::Stale) => return Err(Box::new(challenge(ctx, req, realm, now, true, kind))),
        Err(AuthFailure::Malformed(why)) => {
            return Err(Box::new(plain(req, 400, &format!("Bad {}: {why}", kind.header()))));
        }
        Err(f) => {
            let locked = f.is_guess() && {
                let user_locked = ctx.lockout.lock().map(|mut l| l.record_failure(&pair, now)).unwrap_or(false);
                let source_locked = ctx.lockout_source.lock().map(|mut l| l.record_failure(&ip, now)).unwrap_or(false);
                user_locked || source_locked
            };
            let known = row.is_some();
            match kind {
                Challenge::Www => {
                    warn!(target: "security", source = %ip, portal = %portal.id, user = %user, known_user = known, reason = %f, locked_out = locked, "REGISTER authentication failed")
                }
                Challenge::Proxy => {
                    warn!(target: "security", source = %ip, portal = %portal.id, user = %user, known_user = known, reason = %f, locked_out = locked, "INVITE authentication failed")
                }
            }
            if kind == Challenge::Www {
                crate::ops::metrics::register_failed("auth-failed");
            }
            return Err(Box::new(challenge(ctx, req, realm, now, false, kind)));
        }
    }
    let Some(row) = row else { return Err(Box::new(challenge(ctx, req, realm, now, false, kind))) };
    if let Ok(mut l) = ctx.lockout.lock() {
        l.record_success(&pair);
    }
    Ok(row)
}

impl Challenge {
    fn header(self) -> &'static str {
        match self {
            Challenge::Www => "Authorization",
            Challenge::Proxy => "Proxy-Authorization",
        }
    }
}

fn plain(req: &Request, code: u16, phrase: &str) -> Response {
    Response::from_request(req, code, phrase)
}

/// 401 with one WWW-Authenticate (or 407 with one Proxy-Authenticate) per
/// offered algorithm.
fn challenge(ctx: &Shared, req: &Request, realm: &str, now: u64, stale: bool, kind: Challenge) -> Response {
    let (mut r, name) = match kind {
        Challenge::Www => (plain(req, 401, "Unauthorized"), HeaderName::WwwAuthenticate),
        Challenge::Proxy => (plain(req, 407, "Proxy Authentication Required"), HeaderName::ProxyAuthenticate),
    };
    let values = ctx.auth.lock().map(|a| a.challenges(realm, now, ctx.random8(), stale)).unwrap_or_default();
    for v in values {
        let _ = r.headers_mut().push(name.clone(), v);
    }
    r
}
