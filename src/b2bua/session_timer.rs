//! RFC 4028 session timers, one per leg.
//!
//! The two legs of a call are separate dialogs, so each has its own timer:
//! its own interval, its own refresher, its own deadlines. Nothing here is
//! relayed end to end. What this module holds is pure: reading the header
//! values, the choice each side of a transaction makes, and the deadlines
//! of one leg's timer. The call machine ([`super::call`]) sends the
//! refreshes and ends the call when a deadline passes.
//!
//! Refreshes are told apart from session changes by the SDP origin
//! ([`SdpOrigin`]): RFC 3264 §8 keeps the `o=` version when the session
//! does not change, so an offer with the version the leg last sent us is a
//! refresh and can be answered without the other leg.

use std::time::{Duration, Instant};

use crate::sip::message::{HeaderName, Headers, Method};

use super::media::Body;

/// Our preferred session interval (RFC 4028 §4 recommends 1800 s).
pub const DEFAULT_SESSION_EXPIRES: Duration = Duration::from_secs(1800);

/// The smallest session interval we accept (RFC 4028 §5: never below 90 s).
pub const DEFAULT_MIN_SE: Duration = Duration::from_secs(90);

/// Who refreshes a leg's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    /// trunkgate sends the refreshes.
    Us,
    /// The leg's peer sends them; we end the call when they stop.
    Peer,
}

/// The `refresher` parameter as written: it names a side of the
/// transaction that carries it, not of the dialog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefresherParam {
    /// The sender of the request.
    Uac,
    /// Its recipient.
    Uas,
}

/// A Session-Expires value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionExpires {
    /// The session interval.
    pub delta: Duration,
    /// The `refresher` parameter, when given.
    pub refresher: Option<RefresherParam>,
}

/// A delta-seconds value at the head of a header value (`1800;refresher=uac`).
fn delta_seconds(v: &str) -> Option<Duration> {
    let head = v.split(';').next()?.trim();
    if head.is_empty() || !head.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // More digits than a u32 holds: as long as a u32 allows (136 years).
    Some(Duration::from_secs(head.parse::<u32>().map_or(u64::from(u32::MAX), u64::from)))
}

/// The Session-Expires of a message (compact `x` included); `None` when
/// absent or unreadable (an unreadable one asks for nothing we can honour).
pub fn session_expires(h: &Headers) -> Option<SessionExpires> {
    let v = h.get(&HeaderName::SessionExpires)?.value_str()?;
    let delta = delta_seconds(v)?;
    let refresher = v.split(';').skip(1).find_map(|p| {
        let (name, value) = p.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("refresher") {
            return None;
        }
        match value.trim() {
            r if r.eq_ignore_ascii_case("uac") => Some(RefresherParam::Uac),
            r if r.eq_ignore_ascii_case("uas") => Some(RefresherParam::Uas),
            _ => None,
        }
    });
    Some(SessionExpires { delta, refresher })
}

/// The Min-SE of a message, when present and readable.
pub fn min_se(h: &Headers) -> Option<Duration> {
    delta_seconds(h.get(&HeaderName::MinSe)?.value_str()?)
}

/// The message's Supported lists `timer`.
pub fn supports_timer(h: &Headers) -> bool {
    h.supported().is_ok_and(|tags| tags.iter().any(|t| t.eq_ignore_ascii_case("timer")))
}

/// Whether the message's Allow lists UPDATE; `None` when it has no
/// readable Allow (what we knew stays).
pub fn allows_update(h: &Headers) -> Option<bool> {
    if !h.contains(&HeaderName::Allow) {
        return None;
    }
    h.allow().ok().map(|methods| methods.contains(&Method::Update))
}

/// What we answer a request that may ask for a session timer, as its UAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The session interval of our 2xx.
    pub interval: Duration,
    /// Who refreshes.
    pub refresher: Refresher,
    /// Our 2xx says `Require: timer`: the request said `Supported: timer`,
    /// or the peer refreshes.
    pub require: bool,
}

impl Negotiated {
    /// The Session-Expires of our 2xx (we are the transaction's UAS).
    pub fn response_value(&self) -> String {
        let r = if self.refresher == Refresher::Us { "uas" } else { "uac" };
        format!("{};refresher={r}", self.interval.as_secs())
    }
}

/// The request asked for less than our Min-SE: answer 422 with this Min-SE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooSmall {
    /// Our Min-SE.
    pub min_se: Duration,
}

/// Our choice as the UAS of an INVITE, re-INVITE or UPDATE with headers
/// `h`, on a leg whose timer is `current` (RFC 4028 §9):
///
/// - a Session-Expires below `min_se` is refused (422);
/// - one we accept is honoured, lowered to `preferred` when larger (but
///   never below the request's own Min-SE); its `refresher` is kept
///   (§9: the UAS copies it), and without one we refresh;
/// - without Session-Expires the leg's current timer stays as it is, and a
///   leg that has none gets ours (`preferred`, we refresh) when the peer
///   says `Supported: timer`; otherwise there is no timer on the leg.
pub fn negotiate_uas(
    h: &Headers,
    current: Option<&SessionTimer>,
    preferred: Duration,
    min_se: Duration,
) -> Result<Option<Negotiated>, TooSmall> {
    let supported = supports_timer(h);
    let Some(se) = session_expires(h) else {
        return Ok(match current {
            Some(t) => Some(Negotiated { interval: t.interval, refresher: t.refresher, require: supported }),
            None if supported => Some(Negotiated { interval: preferred, refresher: Refresher::Us, require: true }),
            None => None,
        });
    };
    if se.delta < min_se {
        return Err(TooSmall { min_se });
    }
    let floor = min_se.max(self::min_se(h).unwrap_or(Duration::ZERO));
    let interval = se.delta.min(preferred.max(floor));
    let refresher = match se.refresher {
        Some(RefresherParam::Uac) => Refresher::Peer,
        Some(RefresherParam::Uas) | None => Refresher::Us,
    };
    // A peer that is to refresh is told so with `Require: timer`.
    let require = supported || refresher == Refresher::Peer;
    Ok(Some(Negotiated { interval, refresher, require }))
}

/// The leg's timer after a 2xx to a request we sent on it (RFC 4028 §7.2):
/// none when the 2xx has no Session-Expires; otherwise its interval (a
/// value below `min_se`, which the UAS must not give, is raised to it, so a
/// broken peer cannot make us refresh every second) and its refresher, we
/// when it names none.
pub fn from_uac_response(h: &Headers, min_se: Duration) -> Option<(Duration, Refresher)> {
    let se = session_expires(h)?;
    let refresher = if se.refresher == Some(RefresherParam::Uas) { Refresher::Peer } else { Refresher::Us };
    Some((se.delta.max(min_se), refresher))
}

/// `at + d`, or `None` past what an [`Instant`] holds.
fn after(at: Instant, d: Duration) -> Option<Instant> {
    at.checked_add(d)
}

/// One leg's session timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimer {
    /// The session interval.
    pub interval: Duration,
    /// Who refreshes.
    pub refresher: Refresher,
    /// The last refresh (or the session's start).
    since: Instant,
    /// When we send the next refresh (`None` while one is in flight, or
    /// when the peer refreshes).
    refresh_at: Option<Instant>,
}

impl SessionTimer {
    /// A session (re)started at `now`: when we refresh, the next refresh is
    /// due at half the interval (RFC 4028 §7.4).
    pub fn start(now: Instant, interval: Duration, refresher: Refresher) -> Self {
        let refresh_at = (refresher == Refresher::Us).then(|| after(now, interval / 2)).flatten();
        SessionTimer { interval, refresher, since: now, refresh_at }
    }

    /// When the session expires for us: the interval minus
    /// min(32 s, interval / 3) after the last refresh (RFC 4028 §10), so
    /// our BYE goes out before the peer's own expiry.
    pub fn expiry(&self) -> Option<Instant> {
        let margin = Duration::from_secs(32).min(self.interval / 3);
        after(self.since, self.interval.saturating_sub(margin))
    }

    /// When we send the next refresh, if we do.
    pub fn refresh_at(&self) -> Option<Instant> {
        self.refresh_at
    }

    /// A refresh of ours is in flight: no other until it is answered.
    pub fn refresh_sent(&mut self) {
        self.refresh_at = None;
    }

    /// Our refresh failed (or could not go yet): try again at `at`.
    pub fn retry_at(&mut self, at: Instant) {
        self.refresh_at = Some(at);
    }

    /// The next deadline of this timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.refresh_at, self.expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The Session-Expires of a request we send on the leg (we are the
    /// transaction's UAC).
    pub fn request_value(&self) -> String {
        let r = if self.refresher == Refresher::Us { "uac" } else { "uas" };
        format!("{};refresher={r}", self.interval.as_secs())
    }
}

/// The identity and version of a session description: the session id and
/// version of its `o=` line (RFC 4566 §5.2). The version changes with the
/// session (RFC 3264 §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpOrigin {
    session_id: String,
    version: String,
}

impl SdpOrigin {
    /// The origin of `body`, when it is SDP with a readable `o=` line.
    pub fn of(body: &Body) -> Option<SdpOrigin> {
        if !body.is_sdp() {
            return None;
        }
        let text = std::str::from_utf8(&body.bytes).ok()?;
        let line = text.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix("o="))?;
        let mut fields = line.split_whitespace();
        let _username = fields.next()?;
        let session_id = fields.next()?.to_owned();
        let version = fields.next()?.to_owned();
        Some(SdpOrigin { session_id, version })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[(&str, &str)]) -> Headers {
        let mut h = Headers::new();
        for (n, v) in lines {
            h.push(HeaderName::new(n).expect("name"), v).expect("value");
        }
        h
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn session_expires_values_and_their_refresher() {
        let se = |v: &str| session_expires(&headers(&[("Session-Expires", v)]));
        assert_eq!(se("1800"), Some(SessionExpires { delta: S(1800), refresher: None }));
        assert_eq!(se("90 ; Refresher = UAC").and_then(|s| s.refresher), Some(RefresherParam::Uac));
        assert_eq!(
            se("120;refresher=uas;x=y").map(|s| (s.delta, s.refresher)),
            Some((S(120), Some(RefresherParam::Uas)))
        );
        assert_eq!(se("120;refresher=both").and_then(|s| s.refresher), None);
        assert_eq!(se("-5"), None);
        assert_eq!(se("abc"), None);
        assert_eq!(se("99999999999").map(|s| s.delta), Some(S(u64::from(u32::MAX))));
        // The compact form.
        assert_eq!(session_expires(&headers(&[("x", "300")])).map(|s| s.delta), Some(S(300)));
        assert_eq!(min_se(&headers(&[("Min-SE", "120;p=1")])), Some(S(120)));
    }

    #[test]
    fn uas_refuses_less_than_min_se_and_honours_the_refresher() {
        let n = |lines: &[(&str, &str)]| negotiate_uas(&headers(lines), None, S(1800), S(90));
        assert_eq!(n(&[("Session-Expires", "89")]), Err(TooSmall { min_se: S(90) }));
        // Exactly Min-SE is accepted.
        let ok = n(&[("Session-Expires", "90;refresher=uac"), ("Supported", "timer")]).unwrap().unwrap();
        assert_eq!((ok.interval, ok.refresher, ok.require), (S(90), Refresher::Peer, true));
        assert_eq!(ok.response_value(), "90;refresher=uac");
        // No refresher named: we refresh.
        let ok = n(&[("Session-Expires", "600"), ("Supported", "timer")]).unwrap().unwrap();
        assert_eq!((ok.refresher, ok.response_value()), (Refresher::Us, "600;refresher=uas".to_owned()));
        // The peer's choice is copied even when it does not say Supported.
        let ok = n(&[("Session-Expires", "600;refresher=uac")]).unwrap().unwrap();
        assert_eq!((ok.refresher, ok.require), (Refresher::Peer, true));
        let ok = n(&[("Session-Expires", "600;refresher=uas")]).unwrap().unwrap();
        assert_eq!((ok.refresher, ok.require), (Refresher::Us, false));
        // Larger than we like: lowered to our interval, not below its Min-SE.
        assert_eq!(n(&[("Session-Expires", "7200")]).unwrap().unwrap().interval, S(1800));
        assert_eq!(n(&[("Session-Expires", "7200"), ("Min-SE", "3600")]).unwrap().unwrap().interval, S(3600));
        // Support without a request: our interval, we refresh; neither: none.
        let ok = n(&[("Supported", "100rel, timer")]).unwrap().unwrap();
        assert_eq!((ok.interval, ok.refresher), (S(1800), Refresher::Us));
        assert_eq!(n(&[]), Ok(None));
    }

    #[test]
    fn uac_learns_the_timer_from_the_2xx() {
        let r = |lines: &[(&str, &str)]| from_uac_response(&headers(lines), S(90));
        assert_eq!(r(&[]), None);
        assert_eq!(r(&[("Session-Expires", "1800;refresher=uac")]), Some((S(1800), Refresher::Us)));
        assert_eq!(r(&[("Session-Expires", "1800;refresher=uas")]), Some((S(1800), Refresher::Peer)));
        assert_eq!(r(&[("Session-Expires", "1800")]), Some((S(1800), Refresher::Us)));
        assert_eq!(r(&[("Session-Expires", "1;refresher=uac")]), Some((S(90), Refresher::Us)));
    }

    #[test]
    fn deadlines_of_a_leg() {
        let t0 = crate::clock::instant();
        let us = SessionTimer::start(t0, S(1800), Refresher::Us);
        assert_eq!(us.refresh_at(), Some(t0 + S(900)));
        assert_eq!(us.poll_timeout(), Some(t0 + S(900)));
        assert_eq!(us.expiry(), Some(t0 + S(1800 - 32)));
        let peer = SessionTimer::start(t0, S(90), Refresher::Peer);
        assert_eq!((peer.refresh_at(), peer.expiry()), (None, Some(t0 + S(60))));
        assert_eq!(peer.request_value(), "90;refresher=uas");
    }

    #[test]
    fn sdp_origin_is_session_id_and_version() {
        let body = |s: &str| Body { content_type: "application/sdp".into(), bytes: bytes::Bytes::from(s.to_owned()) };
        let a = SdpOrigin::of(&body("v=0\r\no=pbx 7 1 IN IP4 192.0.2.1\r\ns=-\r\n"));
        let b = SdpOrigin::of(&body("v=0\no=other 7 1 IN IP4 192.0.2.9\ns=-\n"));
        let c = SdpOrigin::of(&body("v=0\r\no=pbx 7 2 IN IP4 192.0.2.1\r\n"));
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(SdpOrigin::of(&body("v=0\r\no=short\r\n")), None);
        let text = Body { content_type: "text/plain".into(), bytes: bytes::Bytes::from_static(b"o=a 1 1") };
        assert_eq!(SdpOrigin::of(&text), None);
    }
}
