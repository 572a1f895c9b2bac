//! SIP digest authentication, server side (RFC 3261 §22, RFC 2617,
//! RFC 7616 algorithms as used by RFC 8760): challenges, nonces, and the
//! verification of a client's credentials against a stored HA1.
//!
//! Sans-IO: nothing here reads the clock or the database. The registrar
//! looks the user's HA1 up and passes `now`.
//!
//! Nonces are stateless: `base64url(issued_at ‖ random ‖ HMAC(secret, issued_at ‖ random ‖ realm))`,
//! so any nonce this node issued can be checked without a table, and one
//! from another realm or a forged one is refused. Replays are stopped by
//! remembering, per nonce still valid, the highest nonce-count (`nc`) seen:
//! a request whose `nc` is not above it is refused. The table is bounded and
//! forgets nonces once they expire (they are refused as stale then anyway).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

use crate::credentials::hex;

/// Digest algorithms we verify (RFC 8760 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5` (RFC 2617): what nearly every SIP device supports.
    Md5,
    /// `SHA-256` (RFC 7616, RFC 8760).
    Sha256,
}

impl Algorithm {
    /// The token in `algorithm=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Parses an `algorithm=` token (case-insensitive). Absent means MD5.
    pub fn from_token(s: Option<&str>) -> Option<Self> {
        match s {
            None => Some(Algorithm::Md5),
            Some(t) if t.eq_ignore_ascii_case("MD5") => Some(Algorithm::Md5),
            Some(t) if t.eq_ignore_ascii_case("SHA-256") => Some(Algorithm::Sha256),
            Some(_) => None,
        }
    }

    fn hash(self, data: &str) -> String {
        match self {
            Algorithm::Md5 => hex(&Md5::digest(data.as_bytes())),
            Algorithm::Sha256 => hex(&Sha256::digest(data.as_bytes())),
        }
    }
}

/// The fields of a client's `Authorization: Digest …` header that matter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DigestCredentials {
    /// `username`.
    pub username: String,
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `uri` (the digest-uri).
    pub uri: String,
    /// `response`.
    pub response: String,
    /// `algorithm`, as sent.
    pub algorithm: Option<String>,
    /// `cnonce`.
    pub cnonce: Option<String>,
    /// `qop`.
    pub qop: Option<String>,
    /// `nc` (8 hex digits).
    pub nc: Option<String>,
    /// `opaque`.
    pub opaque: Option<String>,
}

impl DigestCredentials {
    /// Reads credentials from the auth-params of a `Digest` header: pairs of
    /// (lowercase or any case name, unquoted value). Returns `None` when a
    /// mandatory parameter is missing.
    pub fn from_params<'a>(params: impl IntoIterator<Item = (&'a str, String)>) -> Option<Self> {
        let mut c = DigestCredentials::default();
        let (mut user, mut realm, mut nonce, mut uri, mut resp) = (false, false, false, false, false);
        for (name, value) in params {
            match name.to_ascii_lowercase().as_str() {
                "username" => (c.username, user) = (value, true),
                "realm" => (c.realm, realm) = (value, true),
                "nonce" => (c.nonce, nonce) = (value, true),
                "uri" => (c.uri, uri) = (value, true),
                "response" => (c.response, resp) = (value, true),
                "algorithm" => c.algorithm = Some(value),
                "cnonce" => c.cnonce = Some(value),
                "qop" => c.qop = Some(value),
                "nc" => c.nc = Some(value),
                "opaque" => c.opaque = Some(value),
                _ => {}
            }
        }
        (user && realm && nonce && uri && resp).then_some(c)
    }
}

/// Why credentials were not accepted. The registrar answers a fresh 401 for
/// all of these except [`AuthFailure::Malformed`] (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// Required parameters are missing or malformed: answer 400.
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    /// The nonce was not issued by this node for this realm (forged, or from
    /// before a restart): challenge again.
    #[error("unknown nonce")]
    UnknownNonce,
    /// The nonce is too old: challenge again with `stale=true`, so the
    /// client retries without asking the user.
    #[error("stale nonce")]
    Stale,
    /// The nonce-count did not increase: a replayed request.
    #[error("replayed nonce count")]
    Replay,
    /// The realm is not the one we challenged with.
    #[error("wrong realm")]
    WrongRealm,
    /// Algorithm or qop we did not offer.
    #[error("unsupported algorithm or qop")]
    Unsupported,
    /// The response does not match: wrong password (or wrong user).
    #[error("wrong password")]
    WrongPassword,
}

impl AuthFailure {
    /// Whether the failure counts towards a source's lockout (a guess at a
    /// password), as opposed to the normal stale-nonce round trip.
    pub fn is_guess(&self) -> bool {
        matches!(self, AuthFailure::WrongPassword | AuthFailure::UnknownNonce | AuthFailure::Replay)
    }
}

/// Settings of the digest authenticator.
#[derive(Debug, Clone)]
pub struct DigestConfig {
    /// Algorithms offered, most preferred first (one challenge header each).
    pub algorithms: Vec<Algorithm>,
    /// How long a nonce stays valid.
    pub nonce_lifetime: Duration,
    /// Most nonces whose nonce-count is remembered at once.
    pub max_tracked_nonces: usize,
}

impl Default for DigestConfig {
    fn default() -> Self {
        // SHA-256 first as RFC 8760 recommends, MD5 for the many devices
        // that know nothing else. (The daemon's own default, from the
        // config, is MD5 alone: see `[auth] algorithms`.)
        Self {
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            nonce_lifetime: Duration::from_secs(300),
            max_tracked_nonces: 100_000,
        }
    }
}

/// The server side of digest authentication: issues challenges and
/// verifies credentials. Time (`now`, seconds since the Unix epoch) is an
/// argument everywhere.
pub struct Authenticator {
    config: DigestConfig,
    secret: [u8; 32],
    /// nonce → (issued_at, highest nc seen).
    seen: HashMap<String, (u64, u32)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("config", &self.config).field("tracked", &self.seen.len()).finish()
    }
}

/// Bytes in a nonce: issued_at (8) + random (8) + MAC (16).
const NONCE_RAW: usize = 32;

impl Authenticator {
    /// A new authenticator with a node-local `secret` (random in production,
    /// fixed in tests).
    pub fn new(config: DigestConfig, secret: [u8; 32]) -> Self {
        Self { config, secret, seen: HashMap::new() }
    }

    /// A new authenticator with a random secret.
    pub fn with_random_secret(config: DigestConfig) -> Result<Self, getrandom::Error> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)?;
        Ok(Self::new(config, secret))
    }

    /// The settings.
    pub fn config(&self) -> &DigestConfig {
        &self.config
    }

    fn mac(&self, head: &[u8], realm: &str) -> [u8; 16] {
        // HMAC-SHA256 accepts any key length: new_from_slice cannot fail here.
        let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret) {
            Ok(m) => m,
            Err(_) => return [0; 16],
        };
        mac.update(head);
        mac.update(realm.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// A fresh nonce for `realm`, issued at `now` (Unix seconds); `random`
    /// makes nonces issued in the same second distinct.
    pub fn nonce(&self, realm: &str, now: u64, random: [u8; 8]) -> String {
        let mut raw = [0u8; NONCE_RAW];
        raw[..8].copy_from_slice(&now.to_be_bytes());
        raw[8..16].copy_from_slice(&random);
        let mac = self.mac(&raw[..16], realm);
        raw[16..].copy_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The `WWW-Authenticate` / `Proxy-Authenticate` values (one per offered
    /// algorithm, in preference order) for a challenge in `realm`.
    pub fn challenges(&self, realm: &str, now: u64, random: [u8; 8], stale: bool) -> Vec<String> {
        let nonce = self.nonce(realm, now, random);
        self.config
            .algorithms
            .iter()
            .map(|alg| {
                let mut v =
                    format!("Digest realm=\"{realm}\", nonce=\"{nonce}\", qop=\"auth\", algorithm={}", alg.as_str());
                if stale {
                    let _ = write!(v, ", stale=true");
                }
                v
            })
            .collect()
    }

    /// Checks that `nonce` is ours for `realm`; returns when it was issued.
    fn check_nonce(&self, nonce: &str, realm: &str) -> Result<u64, AuthFailure> {
        let raw = URL_SAFE_NO_PAD.decode(nonce).map_err(|_| AuthFailure::UnknownNonce)?;
        if raw.len() != NONCE_RAW {
            return Err(AuthFailure::UnknownNonce);
        }
        let expected = self.mac(&raw[..16], realm);
        // Constant-time comparison of the MAC.
        let diff = expected.iter().zip(&raw[16..]).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(AuthFailure::UnknownNonce);
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&raw[..8]);
        Ok(u64::from_be_bytes(ts))
    }

    /// Verifies `creds` for a request with `method`, against the user's HA1
    /// for the credentials' algorithm (`ha1_for` returns it, or `None` for an
    /// unknown user, which fails exactly like a wrong password).
    pub fn verify(
        &mut self,
        creds: &DigestCredentials,
        method: &str,
        expected_realm: &str,
        ha1_for: impl FnOnce(Algorithm) -> Option<String>,
        now: u64,
    ) -> Result<Algorithm, AuthFailure> {
        if creds.realm != expected_realm {
            return Err(AuthFailure::WrongRealm);
        }
        let alg = Algorithm::from_token(creds.algorithm.as_deref()).ok_or(AuthFailure::Unsupported)?;
        if !self.config.algorithms.contains(&alg) {
            return Err(AuthFailure::Unsupported);
        }
        // We offer qop="auth" only; RFC 2069 digests (no qop) have no
        // nonce-count and so no replay protection: refuse them.
        match creds.qop.as_deref() {
            Some(q) if q.eq_ignore_ascii_case("auth") => {}
            Some(_) | None => return Err(AuthFailure::Unsupported),
        }
        let cnonce = creds.cnonce.as_deref().ok_or(AuthFailure::Malformed("cnonce missing with qop"))?;
        let nc_text = creds.nc.as_deref().ok_or(AuthFailure::Malformed("nc missing with qop"))?;
        if nc_text.len() != 8 {
            return Err(AuthFailure::Malformed("nc is not 8 hex digits"));
        }
        let nc = u32::from_str_radix(nc_text, 16).map_err(|_| AuthFailure::Malformed("nc is not 8 hex digits"))?;
        let issued = self.check_nonce(&creds.nonce, expected_realm)?;
        let age = now.saturating_sub(issued);
        if age >= self.config.nonce_lifetime.as_secs() || issued > now.saturating_add(60) {
            return Err(AuthFailure::Stale);
        }
        let ha1 = ha1_for(alg);
        // Compute even for an unknown user so timing does not tell users apart.
        let ha1 = ha1.as_deref().unwrap_or("0000000000000000000000000000000000000000000000000000000000000000");
        let ha2 = alg.hash(&format!("{method}:{}", creds.uri));
        let expected = alg.hash(&format!("{ha1}:{}:{nc_text}:{cnonce}:auth:{ha2}", creds.nonce));
        let given = creds.response.to_ascii_lowercase();
        let same = expected.len() == given.len()
            && expected.bytes().zip(given.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if !same {
            return Err(AuthFailure::WrongPassword);
        }
        // Replay: the nonce-count must increase for each use of a nonce.
        self.forget_expired(now);
        match self.seen.get_mut(&creds.nonce) {
            Some((_, last)) if nc <= *last => return Err(AuthFailure::Replay),
            Some((_, last)) => *last = nc,
            None => {
                if self.seen.len() >= self.config.max_tracked_nonces {
                    // Full: refuse to remember more, so force a new nonce.
                    return Err(AuthFailure::Stale);
                }
                self.seen.insert(creds.nonce.clone(), (issued, nc));
            }
        }
        Ok(alg)
    }

    fn forget_expired(&mut self, now: u64) {
        let lifetime = self.config.nonce_lifetime.as_secs();
        // Amortised: only sweep when the table has grown.
        if self.seen.len() >= 1024 && self.seen.len().is_power_of_two() {
            self.seen.retain(|_, (issued, _)| now.saturating_sub(*issued) < lifetime);
        }
    }

    /// Nonces whose count is being tracked.
    pub fn tracked(&self) -> usize {
        self.seen.len()
    }
}

/// A server's digest challenge, as we (the client) read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// realm.
    pub realm: String,
    /// nonce.
    pub nonce: String,
    /// opaque, echoed back.
    pub opaque: Option<String>,
    /// algorithm.
    pub algorithm: Algorithm,
    /// The server offers qop=auth (else RFC 2069 style).
    pub qop_auth: bool,
    /// The nonce was stale: our credentials were right.
    pub stale: bool,
}

impl Challenge {
    /// The challenge we answer among a 401/407's: SHA-256 before MD5 (RFC
    /// 8760 §2.4: the strongest the client supports), and only `Digest`
    /// ones whose qop we can do (absent or listing `auth`).
    pub fn pick<'a>(
        challenges: impl IntoIterator<Item = &'a crate::sip::message::AuthHeader<'a>>,
    ) -> Option<Challenge> {
        let mut best: Option<Challenge> = None;
        for c in challenges {
            if !c.scheme().eq_ignore_ascii_case("digest") {
                continue;
            }
            let Some(algorithm) = Algorithm::from_token(c.param_unquoted("algorithm").as_deref()) else { continue };
            let (Some(realm), Some(nonce)) = (c.param_unquoted("realm"), c.param_unquoted("nonce")) else { continue };
            let qop = c.param_unquoted("qop").map(|q| q.into_owned());
            let qop_auth = match &qop {
                None => false,
                Some(q) if q.split(',').any(|t| t.trim().eq_ignore_ascii_case("auth")) => true,
                Some(_) => continue,
            };
            let this = Challenge {
                realm: realm.into_owned(),
                nonce: nonce.into_owned(),
                opaque: c.param_unquoted("opaque").map(|o| o.into_owned()),
                algorithm,
                qop_auth,
                stale: c.param_unquoted("stale").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            };
            if best.as_ref().is_none_or(|b| b.algorithm == Algorithm::Md5 && algorithm == Algorithm::Sha256) {
                best = Some(this);
            }
        }
        best
    }

    /// Our `Authorization`/`Proxy-Authorization` value for `method` on
    /// `uri` (nonce count 1: every challenge brings a fresh nonce).
    pub fn answer(&self, method: &str, uri: &str, username: &str, password: &str, cnonce: &str) -> String {
        let h = crate::credentials::Ha1::compute(username, &self.realm, password);
        let ha1 = if self.algorithm == Algorithm::Md5 { h.md5 } else { h.sha256 };
        let q = |s: &str| s.replace(['"', '\\'], "");
        let mut v = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", ",
            q(username),
            q(&self.realm),
            q(&self.nonce),
            q(uri)
        );
        if self.qop_auth {
            let nc = "00000001";
            let response = client_response(self.algorithm, &ha1, method, uri, &self.nonce, nc, cnonce);
            v.push_str(&format!(
                "response=\"{response}\", algorithm={}, cnonce=\"{cnonce}\", qop=auth, nc={nc}",
                self.algorithm.as_str()
            ));
        } else {
            // RFC 2069 (no qop): H(HA1:nonce:HA2).
            let ha2 = self.algorithm.hash(&format!("{method}:{uri}"));
            let response = self.algorithm.hash(&format!("{ha1}:{}:{ha2}", self.nonce));
            v.push_str(&format!("response=\"{response}\", algorithm={}", self.algorithm.as_str()));
        }
        if let Some(o) = &self.opaque {
            v.push_str(&format!(", opaque=\"{}\"", q(o)));
        }
        v
    }
}

/// The response a client computes (for tests and for our own UAC role).
pub fn client_response(
    alg: Algorithm,
    ha1: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
) -> String {
    let ha2 = alg.hash(&format!("{method}:{uri}"));
    alg.hash(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Ha1;

    const REALM: &str = "acme.example.com";
    const NOW: u64 = 1_780_000_000;

    fn auth() -> Authenticator {
        Authenticator::new(DigestConfig::default(), [7; 32])
    }

    fn creds(a: &Authenticator, alg: Algorithm, password: &str, nc: &str, now: u64) -> DigestCredentials {
        let nonce = a.nonce(REALM, now, [1; 8]);
        let ha1 = Ha1::compute("alice", REALM, password);
        let ha1 = if alg == Algorithm::Md5 { ha1.md5 } else { ha1.sha256 };
        let uri = "sip:acme.example.com";
        DigestCredentials {
            username: "alice".into(),
            realm: REALM.into(),
            response: client_response(alg, &ha1, "REGISTER", uri, &nonce, nc, "c0ffee"),
            nonce,
            uri: uri.into(),
            algorithm: Some(alg.as_str().into()),
            cnonce: Some("c0ffee".into()),
            qop: Some("auth".into()),
            nc: Some(nc.into()),
            opaque: None,
        }
    }

    fn ha1_of(alg: Algorithm) -> Option<String> {
        let h = Ha1::compute("alice", REALM, "right-password");
        Some(if alg == Algorithm::Md5 { h.md5 } else { h.sha256 })
    }

    #[test]
    fn our_answer_to_a_challenge_without_qop_echoes_opaque_and_follows_rfc_2069() {
        let raw = "Digest realm=\"pbx\", nonce=\"abc\", opaque=\"xyz\", algorithm=MD5";
        let parsed = crate::sip::message::AuthHeader::parse(raw.as_bytes()).expect("parses");
        let c = Challenge::pick([&parsed]).expect("a challenge we can answer");
        assert_eq!((c.qop_auth, c.stale, c.opaque.as_deref()), (false, false, Some("xyz")));
        let v = c.answer("INVITE", "sip:1@pbx", "u", "p", "cn");
        let ha1 = Ha1::compute("u", "pbx", "p").md5;
        let ha2 = Algorithm::Md5.hash("INVITE:sip:1@pbx");
        let expected = Algorithm::Md5.hash(&format!("{ha1}:abc:{ha2}"));
        assert_eq!(
            v,
            format!(
                "Digest username=\"u\", realm=\"pbx\", nonce=\"abc\", uri=\"sip:1@pbx\", response=\"{expected}\", algorithm=MD5, opaque=\"xyz\""
            )
        );
        // A qop we cannot do (auth-int only) is not answered.
        let int = crate::sip::message::AuthHeader::parse(b"Digest realm=\"pbx\", nonce=\"n\", qop=\"auth-int\"")
            .expect("parses");
        assert_eq!(Challenge::pick([&int]), None);
    }

    #[test]
    fn rfc2617_md5_example_response() {
        // RFC 2617 §3.5 (HTTP, but the same computation).
        let ha1 = Ha1::compute("Mufasa", "testrealm@host.com", "Circle Of Life").md5;
        let r = client_response(
            Algorithm::Md5,
            &ha1,
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "00000001",
            "0a4f113b",
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc7616_sha256_example_response() {
        // RFC 7616 §3.9.1.
        let ha1 = Ha1::compute("Mufasa", "http-auth@example.org", "Circle of Life").sha256;
        let r = client_response(
            Algorithm::Sha256,
            &ha1,
            "GET",
            "/dir/index.html",
            "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            "00000001",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        );
        assert_eq!(r, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1");
    }

    #[test]
    fn both_algorithms_verify_and_wrong_password_fails() {
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let mut a = auth();
            let good = creds(&a, alg, "right-password", "00000001", NOW);
            assert_eq!(a.verify(&good, "REGISTER", REALM, ha1_of, NOW), Ok(alg));
            let bad = creds(&a, alg, "wrong-password", "00000001", NOW);
            assert_eq!(a.verify(&bad, "REGISTER", REALM, ha1_of, NOW), Err(AuthFailure::WrongPassword));
            assert_eq!(a.verify(&good, "REGISTER", REALM, |_| None, NOW), Err(AuthFailure::WrongPassword));
        }
    }

    #[test]
    fn method_is_part_of_the_digest() {
        let mut a = auth();
        let c = creds(&a, Algorithm::Md5, "right-password", "00000001", NOW);
        assert_eq!(a.verify(&c, "INVITE", REALM, ha1_of, NOW), Err(AuthFailure::WrongPassword));
    }

    #[test]
    fn nonce_count_must_increase() {
        let mut a = auth();
        let c1 = creds(&a, Algorithm::Md5, "right-password", "00000001", NOW);
        assert!(a.verify(&c1, "REGISTER", REALM, ha1_of, NOW).is_ok());
        assert_eq!(a.verify(&c1, "REGISTER", REALM, ha1_of, NOW), Err(AuthFailure::Replay), "same nc replayed");
        let c2 = creds(&a, Algorithm::Md5, "right-password", "00000002", NOW);
        assert!(a.verify(&c2, "REGISTER", REALM, ha1_of, NOW + 1).is_ok());
        assert_eq!(a.verify(&c1, "REGISTER", REALM, ha1_of, NOW + 1), Err(AuthFailure::Replay), "older nc");
        assert_eq!(a.tracked(), 1);
    }

    #[test]
    fn nonce_expires_exactly_at_its_lifetime() {
        let mut a = auth();
        let issued = NOW;
        let c = creds(&a, Algorithm::Md5, "right-password", "00000001", issued);
        assert_eq!(a.verify(&c, "REGISTER", REALM, ha1_of, issued + 300), Err(AuthFailure::Stale));
        assert!(a.verify(&c, "REGISTER", REALM, ha1_of, issued + 299).is_ok());
    }

    #[test]
    fn forged_or_foreign_nonces_are_refused() {
        let mut a = auth();
        let mut c = creds(&a, Algorithm::Md5, "right-password", "00000001", NOW);
        let mut forged = c.clone();
        forged.nonce = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into();
        assert_eq!(a.verify(&forged, "REGISTER", REALM, ha1_of, NOW), Err(AuthFailure::UnknownNonce));
        let other = Authenticator::new(DigestConfig::default(), [8; 32]);
        c.nonce = other.nonce(REALM, NOW, [1; 8]);
        assert_eq!(a.verify(&c, "REGISTER", REALM, ha1_of, NOW), Err(AuthFailure::UnknownNonce));
        // A nonce issued for another realm does not verify in this one.
        let mut c = creds(&a, Algorithm::Md5, "right-password", "00000001", NOW);
        c.nonce = a.nonce("other.example.com", NOW, [1; 8]);
        assert_eq!(a.verify(&c, "REGISTER", REALM, ha1_of, NOW), Err(AuthFailure::UnknownNonce));
        c.realm = "other.example.com".into();
        assert_eq!(a.verify(&c, "REGISTER", REALM, ha1_of, NOW), Err(AuthFailure::WrongRealm));
    }

    #[test]
    fn unsupported_and_malformed() {
        let mut a =
            Authenticator::new(DigestConfig { algorithms: vec![Algorithm::Md5], ..Default::default() }, [7; 32]);
        let c = creds(&a, Algorithm::Sha256, "right-password", "00000001", NOW);
        assert_eq!(a.verify(&c, "REGISTER", REALM, ha1_of, NOW), Err(AuthFailure::Unsupported), "not offered");
        let mut c = creds(&a, Algorithm::Md5, "right-password", "00000001", NOW);
        c.qop = None;
        assert_eq!(a.verify(&c, "REGISTER", REALM, ha1_of, NOW), Err(AuthFailure::Unsupported), "RFC 2069");
        let mut c = creds(&a, Algorithm::Md5, "right-password", "00000001", NOW);
        c.nc = Some("1".into());
        assert!(matches!(a.verify(&c, "REGISTER", REALM, ha1_of, NOW), Err(AuthFailure::Malformed(_))));
        let mut c = creds(&a, Algorithm::Md5, "right-password", "00000001", NOW);
        c.algorithm = Some("MD5-sess".into());
        assert_eq!(a.verify(&c, "REGISTER", REALM, ha1_of, NOW), Err(AuthFailure::Unsupported));
    }

    #[test]
    fn challenges_offer_each_algorithm_with_one_nonce() {
        let a = auth();
        let ch = a.challenges(REALM, NOW, [9; 8], true);
        assert_eq!(ch.len(), 2);
        assert!(ch[0].contains("algorithm=SHA-256") && ch[1].contains("algorithm=MD5"));
        assert!(ch.iter().all(|c| c.contains("qop=\"auth\"") && c.contains("stale=true")));
        let nonce = |c: &str| c.split("nonce=\"").nth(1).and_then(|r| r.split('"').next()).map(str::to_owned);
        assert_eq!(nonce(&ch[0]), nonce(&ch[1]));
    }

    #[test]
    fn from_params_needs_the_mandatory_fields() {
        let full = [
            ("username", "a".to_owned()),
            ("Realm", "r".to_owned()),
            ("nonce", "n".to_owned()),
            ("uri", "sip:r".to_owned()),
            ("response", "x".to_owned()),
        ];
        assert!(DigestCredentials::from_params(full.clone()).is_some());
        assert!(DigestCredentials::from_params(full[..4].to_vec()).is_none());
    }
}
