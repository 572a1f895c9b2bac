//! Our registration to a cloud PBX or SIP provider (RFC 3261 §10.2), as a
//! sans-IO machine: a trunk with `register = true` keeps its contact bound
//! at the provider's registrar, so calls to the trunk's number reach us
//! wherever the provider sends from.
//!
//! Use: [`Registration::start`], then send what [`Registration::poll_request`]
//! gives (the driver adds Via and runs the client transaction), feed the
//! final response with [`Registration::handle_response`] (or
//! [`Registration::handle_failure`] for a timeout or transport error), and
//! call [`Registration::handle_timeout`] at [`Registration::poll_timeout`].
//!
//! - the binding is refreshed at half the expiry the registrar granted;
//! - 401/407 are answered with the trunk's credentials (once per challenge,
//!   again for a stale nonce);
//! - 423 raises the asked expiry to the registrar's Min-Expires and
//!   registers again at once;
//! - any other failure waits before the next attempt: the registrar's
//!   Retry-After when it gives one, else an exponential back-off (30 s by
//!   default, doubling to 30 min) with jitter, so a fleet of trunks does not come
//!   back in step after an outage;
//! - one Call-ID and From tag for the machine's life, CSeq rising (§10.2.4).
//!
//! The machine never reads a clock or draws a random number: time is an
//! argument and the jitter comes from a seed the driver gives.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::b2bua::outbound::Credentials;
use crate::sip::digest::Challenge;
use crate::sip::message::{HeaderName, Method, Request, Response, Uri};

/// First wait after a failure by default; doubles per failure in a row.
pub const BACKOFF_BASE: Duration = Duration::from_secs(30);
/// Longest wait between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1800);

/// What the machine needs.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// Request-URI of the REGISTER (`sip:provider.example.com`).
    pub registrar: Uri,
    /// Address of record, To and From (`sip:account@provider.example.com`).
    pub aor: String,
    /// Our Contact URI (with the trunk's contact user).
    pub contact: String,
    /// Expiry asked for.
    pub expires: Duration,
    /// For the registrar's challenges.
    pub credentials: Option<Credentials>,
    /// Call-ID (one for the machine's life).
    pub call_id: String,
    /// From tag.
    pub from_tag: String,
    /// Seed of the back-off jitter.
    pub seed: u64,
    /// First wait after a failure (doubling per failure in a row, up to
    /// [`BACKOFF_MAX`]); [`BACKOFF_BASE`] by default.
    pub backoff: Duration,
}

/// Where the registration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegState {
    /// Not started, or stopped.
    Idle,
    /// A REGISTER is out.
    Registering,
    /// Bound until `expires_at`; refreshed at `refresh_at`.
    Registered {
        /// Granted expiry.
        expires: Duration,
        /// When the binding runs out.
        expires_at: Instant,
        /// When it is refreshed.
        refresh_at: Instant,
    },
    /// The last attempt failed; the next is at `retry_at`.
    Failed {
        /// Its status (408: no answer; 503: transport error too).
        status: u16,
        /// Its reason phrase, or what we found wrong.
        reason: String,
        /// Next attempt.
        retry_at: Instant,
        /// Failures in a row.
        failures: u32,
    },
    /// The binding is being removed (Expires: 0).
    Unregistering,
}

impl RegState {
    /// `registered`, `registering`, `failed`, `idle`, `unregistering`.
    pub fn name(&self) -> &'static str {
        match self {
            RegState::Idle => "idle",
            RegState::Registering => "registering",
            RegState::Registered { .. } => "registered",
            RegState::Failed { .. } => "failed",
            RegState::Unregistering => "unregistering",
        }
    }
}

/// One trunk's registration.
#[derive(Debug)]
pub struct Registration {
    cfg: RegistrationConfig,
    state: RegState,
    cseq: u32,
    /// Expiry asked for (raised by 423).
    asked: Duration,
    /// Challenges answered since the last success.
    auth_tries: u8,
    failures: u32,
    rng: u64,
    /// The REGISTER out, awaiting its final response.
    outstanding: Option<Request>,
    out: VecDeque<Request>,
    timer: Option<Instant>,
}

impl Registration {
    /// A machine, idle.
    pub fn new(cfg: RegistrationConfig) -> Registration {
        let asked = cfg.expires;
        // splitmix64 of the seed: neighbouring seeds (trunk numbers, say)
        // give unrelated streams; never zero (xorshift's fixed point).
        let mut z = cfg.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let rng = (z ^ (z >> 31)) | 1;
        Registration {
            cfg,
            state: RegState::Idle,
            cseq: 0,
            asked,
            auth_tries: 0,
            failures: 0,
            rng,
            outstanding: None,
            out: VecDeque::new(),
            timer: None,
        }
    }

    /// Where it stands.
    pub fn state(&self) -> &RegState {
        &self.state
    }

    /// The expiry asked for now (the configured one, or the registrar's
    /// Min-Expires after a 423).
    pub fn asked_expiry(&self) -> Duration {
        self.asked
    }

    /// Registers now.
    pub fn start(&mut self, _now: Instant) {
        self.send(self.asked, None);
    }

    /// Removes the binding (Expires: 0) when there is one to remove.
    pub fn stop(&mut self, _now: Instant) {
        self.timer = None;
        if matches!(self.state, RegState::Registered { .. } | RegState::Registering) {
            self.state = RegState::Unregistering;
            self.send(Duration::ZERO, None);
        } else {
            self.state = RegState::Idle;
        }
    }

    /// The next REGISTER to send (no Via yet).
    pub fn poll_request(&mut self) -> Option<Request> {
        self.out.pop_front()
    }

    /// When [`Registration::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timer
    }

    /// Time passed: refresh, or try again after a failure.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timer.is_none_or(|t| t > now) || self.outstanding.is_some() {
            return;
        }
        self.timer = None;
        self.send(self.asked, None);
    }

    /// The REGISTER got no final response (408) or could not be sent (503).
    pub fn handle_failure(&mut self, now: Instant, status: u16) {
        if self.outstanding.take().is_none() {
            return;
        }
        let reason = if status == 408 { "no answer" } else { "transport error" };
        self.fail(now, status, reason.to_owned(), None);
    }

    /// The final response to our REGISTER.
    pub fn handle_response(&mut self, now: Instant, resp: &Response) {
        let status = resp.status();
        if status < 200 {
            return;
        }
        let Some(sent) = self.outstanding.take() else { return };
        let cseq = resp.headers().cseq().map(|c| c.seq).unwrap_or(0);
        if cseq != self.cseq {
            // Not the answer to our latest REGISTER.
            self.outstanding = Some(sent);
            return;
        }
        if self.state == RegState::Unregistering {
            self.state = RegState::Idle;
            return;
        }
        match status {
            200..=299 => self.registered(now, &sent, resp),
            401 | 407 => {
                if !self.answer_challenge(&sent, resp) {
                    self.fail(now, status, "credentials refused".into(), None);
                }
            }
            423 => {
                let min = resp
                    .headers()
                    .get(&HeaderName::MinExpires)
                    .and_then(|h| h.value_str())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                match min {
                    Some(min) if min > self.asked => {
                        self.asked = min;
                        self.send(min, None);
                    }
                    _ => self.fail(now, status, "423 without a usable Min-Expires".into(), None),
                }
            }
            _ => {
                let retry_after =
                    resp.headers().retry_after().ok().flatten().map(|r| Duration::from_secs(u64::from(r.seconds())));
                self.fail(now, status, resp.reason_lossy().into_owned(), retry_after);
            }
        }
    }

    fn registered(&mut self, now: Instant, sent: &Request, resp: &Response) {
        // The registrar's say: our Contact's expires param, else Expires,
        // else what we asked (§10.2.4).
        let ours = sent.headers().contacts().ok().and_then(|c| match c {
            crate::sip::message::Contacts::List(l) => l.first().map(|c| c.uri().as_str().to_owned()),
            crate::sip::message::Contacts::Star => None,
        });
        let from_contact = resp.headers().contacts().ok().and_then(|c| match c {
            crate::sip::message::Contacts::List(l) => l
                .iter()
                .find(|c| ours.as_deref().is_some_and(|o| same_contact(c.uri().as_str(), o)))
                .and_then(|c| c.expires().and_then(Result::ok)),
            crate::sip::message::Contacts::Star => None,
        });
        let granted = from_contact
            .or_else(|| resp.headers().expires().ok().flatten())
            .map_or(self.asked, |s| Duration::from_secs(u64::from(s)));
        if granted.is_zero() {
            self.fail(now, resp.status(), "the registrar bound nothing".into(), None);
            return;
        }
        self.failures = 0;
        self.auth_tries = 0;
        let refresh_at = now + granted / 2;
        self.timer = Some(refresh_at);
        self.state = RegState::Registered { expires: granted, expires_at: now + granted, refresh_at };
    }

    fn answer_challenge(&mut self, sent: &Request, resp: &Response) -> bool {
        let Some(creds) = self.cfg.credentials.clone() else { return false };
        let (list, header) = if resp.status() == 401 {
            (resp.headers().www_authenticate(), HeaderName::Authorization)
        } else {
            (resp.headers().proxy_authenticate(), HeaderName::ProxyAuthorization)
        };
        let Some(challenge) = list.ok().and_then(|l| Challenge::pick(l.iter())) else { return false };
        if self.auth_tries >= 1 && !challenge.stale {
            return false;
        }
        if self.auth_tries >= 3 {
            return false;
        }
        self.auth_tries += 1;
        // The nonce count is always 1: each challenge brings a new nonce.
        let cnonce = format!("{:016x}", self.next_random());
        let value = challenge.answer("REGISTER", sent.uri().as_str(), &creds.username, &creds.password, &cnonce);
        let expires = sent.headers().expires().ok().flatten().map_or(self.asked, |s| Duration::from_secs(u64::from(s)));
        self.send(expires, Some((header, value)));
        true
    }

    fn fail(&mut self, now: Instant, status: u16, reason: String, retry_after: Option<Duration>) {
        self.failures = self.failures.saturating_add(1);
        self.auth_tries = 0;
        let wait = match retry_after {
            Some(r) if !r.is_zero() => r.min(BACKOFF_MAX),
            _ => self.backoff(),
        };
        let retry_at = now + wait;
        self.timer = Some(retry_at);
        self.state = RegState::Failed { status, reason, retry_at, failures: self.failures };
    }

    /// base · 2^(failures−1), capped, times a jitter in [0.5, 1).
    fn backoff(&mut self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(16);
        let full = self.cfg.backoff.saturating_mul(1u32 << exp).min(BACKOFF_MAX);
        let u = (self.next_random() >> 11) as f64 / (1u64 << 53) as f64;
        full.mul_f64(0.5 + 0.5 * u)
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: enough for jitter.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn send(&mut self, expires: Duration, auth: Option<(HeaderName, String)>) {
        self.cseq = self.cseq.wrapping_add(1);
        let mut b = Request::builder(Method::Register, self.cfg.registrar.clone())
            .header(HeaderName::MaxForwards, "70")
            .header(HeaderName::From, format!("<{}>;tag={}", self.cfg.aor, self.cfg.from_tag))
            .header(HeaderName::To, format!("<{}>", self.cfg.aor))
            .header(HeaderName::CallId, &self.cfg.call_id)
            .header(HeaderName::CSeq, format!("{} REGISTER", self.cseq))
            .header(HeaderName::Contact, format!("<{}>", self.cfg.contact))
            .header(HeaderName::Expires, expires.as_secs().to_string())
            .header(HeaderName::UserAgent, crate::sip::PRODUCT);
        if let Some((name, value)) = auth {
            b = b.header(name, value);
        }
        let Ok(req) = b.build() else { return };
        if self.state != RegState::Unregistering {
            self.state = RegState::Registering;
        }
        self.outstanding = Some(req.clone());
        self.out.push_back(req);
    }
}

/// Two contact URIs name the same binding: compared without parameters
/// and case-insensitively in the host (a registrar may add or reorder
/// parameters).
fn same_contact(a: &str, b: &str) -> bool {
    let base = |s: &str| s.split(';').next().unwrap_or("").to_ascii_lowercase();
    base(a) == base(b)
}

#[cfg(test)]
mod tests;
