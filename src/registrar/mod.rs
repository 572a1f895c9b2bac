//! The location service of portal users (RFC 3261 §10): bindings from an
//! address of record (portal id + username) to contacts, with their expiry.
//!
//! Sans-IO: [`Location`] is a plain table fed with `now`; the REGISTER
//! handler in the node (`crate::node`) authenticates, applies the licence rules and
//! then calls [`Location::apply`]. Bindings live in memory on the node that
//! took them (fleet-wide location is a later step).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::admission::PortalId;

/// An address of record: a portal user, bound to the portal **id** (never
/// the domain, which a later portal may own).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Aor {
    /// Portal id.
    pub portal: PortalId,
    /// Username.
    pub user: String,
}

/// Where a binding was learned: what the registrar saw on the wire, so a
/// request to this contact can reuse the connection (RFC 5626 spirit) or
/// reach a NATed phone at its public address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// `udp` or `tcp`.
    pub transport: crate::transport::Transport,
    /// The peer's address as seen by us.
    pub addr: SocketAddr,
}

/// One contact of an AOR.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// The contact URI exactly as registered (url-parameters included).
    pub contact: String,
    /// `q` preference, 0.0..=1.0 (None when not given).
    pub q: Option<f32>,
    /// When it expires (seconds since the Unix epoch).
    pub expires_at: u64,
    /// Call-ID of the REGISTER that made or last refreshed it.
    pub call_id: String,
    /// CSeq of that REGISTER.
    pub cseq: u32,
    /// Where the REGISTER came from.
    pub source: Source,
}

impl Binding {
    /// Seconds left at `now`.
    pub fn remaining(&self, now: u64) -> u64 {
        self.expires_at.saturating_sub(now)
    }
}

/// One Contact of a REGISTER, as parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactSpec {
    /// The URI text (inside `<>` if it was a name-addr).
    pub uri: String,
    /// The `expires` contact parameter, if any.
    pub expires: Option<u64>,
    /// The `q` parameter, if any.
    pub q: Option<f32>,
}

/// What a REGISTER asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum RegisterAction {
    /// Fetch the current bindings (no Contact header).
    Fetch,
    /// `Contact: *` with `Expires: 0`: remove every binding of the AOR.
    RemoveAll,
    /// Add, refresh or remove (expires 0) these contacts.
    Update(Vec<ContactSpec>),
}

/// The parts of a REGISTER the location table uses.
#[derive(Debug, Clone, Copy)]
pub struct RegisterRequest<'a> {
    /// What it asks for.
    pub action: &'a RegisterAction,
    /// The Expires header, if any.
    pub header_expires: Option<u64>,
    /// Call-ID.
    pub call_id: &'a str,
    /// CSeq number.
    pub cseq: u32,
    /// Where it came from.
    pub source: Source,
}

/// Limits of the registrar.
#[derive(Debug, Clone)]
pub struct RegistrarConfig {
    /// Shortest registration accepted; shorter non-zero ones get 423.
    pub min_expires: Duration,
    /// Longest registration granted; longer ones are shortened.
    pub max_expires: Duration,
    /// Registration granted when the request names none.
    pub default_expires: Duration,
    /// Most contacts per AOR.
    pub max_contacts: usize,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        Self {
            min_expires: Duration::from_secs(60),
            max_expires: Duration::from_secs(3600),
            default_expires: Duration::from_secs(3600),
            max_contacts: 10,
        }
    }
}

/// Why a REGISTER's bindings could not be applied; each maps to a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// An expiry under the minimum: answer 423 with `Min-Expires`.
    #[error("interval too brief (minimum {min_expires} s)")]
    IntervalTooBrief {
        /// The minimum, seconds.
        min_expires: u64,
    },
    /// `*` with other contacts or a non-zero expiry: answer 400.
    #[error("Contact: * needs Expires: 0 and no other contact")]
    BadWildcard,
    /// Same Call-ID with a CSeq not above the stored one (an old or
    /// reordered REGISTER): answer 500 with Retry-After? RFC 3261 §10.3 step
    /// 7 says the update fails; we answer 400 with this reason.
    #[error("out-of-order REGISTER (CSeq not above the binding's)")]
    OutOfOrder,
    /// Too many contacts for one AOR: answer 403.
    #[error("too many contacts (maximum {max})")]
    TooManyContacts {
        /// The maximum.
        max: usize,
    },
}

/// All bindings of this node.
#[derive(Debug, Default)]
pub struct Location {
    config: RegistrarConfig,
    bindings: HashMap<Aor, Vec<Binding>>,
}

impl Location {
    /// An empty table.
    pub fn new(config: RegistrarConfig) -> Self {
        Self { config, bindings: HashMap::new() }
    }

    /// The limits.
    pub fn config(&self) -> &RegistrarConfig {
        &self.config
    }

    /// Applies a REGISTER for `aor` (already authenticated and admitted)
    /// and returns the AOR's bindings afterwards, for the 200 OK.
    pub fn apply(&mut self, aor: &Aor, req: &RegisterRequest<'_>, now: u64) -> Result<Vec<Binding>, RegisterError> {
        let RegisterRequest { action, header_expires, call_id, cseq, source } = *req;
        self.expire_aor(aor, now);
        match action {
            RegisterAction::Fetch => {}
            RegisterAction::RemoveAll => {
                if header_expires != Some(0) {
                    return Err(RegisterError::BadWildcard);
                }
                if let Some(list) = self.bindings.get(aor) {
                    // §10.3 step 6: a wildcard from the same Call-ID with an
                    // older CSeq is out of order.
                    if list.iter().any(|b| b.call_id == call_id && cseq <= b.cseq) {
                        return Err(RegisterError::OutOfOrder);
                    }
                }
                self.bindings.remove(aor);
            }
            RegisterAction::Update(contacts) => {
                let min = self.config.min_expires.as_secs();
                let max = self.config.max_expires.as_secs();
                // Validate everything first so a refused request changes nothing.
                let mut planned = Vec::with_capacity(contacts.len());
                for c in contacts {
                    if c.uri == "*" {
                        return Err(RegisterError::BadWildcard);
                    }
                    let requested = c.expires.or(header_expires).unwrap_or(self.config.default_expires.as_secs());
                    if requested != 0 && requested < min {
                        return Err(RegisterError::IntervalTooBrief { min_expires: min });
                    }
                    planned.push((c, requested.min(max)));
                }
                let list = self.bindings.entry(aor.clone()).or_default();
                for (c, _) in &planned {
                    if let Some(b) = list.iter().find(|b| same_contact(&b.contact, &c.uri))
                        && b.call_id == call_id
                        && cseq <= b.cseq
                    {
                        return Err(RegisterError::OutOfOrder);
                    }
                }
                let mut next = list.clone();
                for (c, expires) in planned {
                    let pos = next.iter().position(|b| same_contact(&b.contact, &c.uri));
                    match (pos, expires) {
                        (Some(i), 0) => {
                            next.remove(i);
                        }
                        (None, 0) => {}
                        (Some(i), e) => {
                            next[i] = Binding {
                                contact: c.uri.clone(),
                                q: c.q,
                                expires_at: now + e,
                                call_id: call_id.to_owned(),
                                cseq,
                                source,
                            };
                        }
                        (None, e) => next.push(Binding {
                            contact: c.uri.clone(),
                            q: c.q,
                            expires_at: now + e,
                            call_id: call_id.to_owned(),
                            cseq,
                            source,
                        }),
                    }
                }
                if next.len() > self.config.max_contacts {
                    return Err(RegisterError::TooManyContacts { max: self.config.max_contacts });
                }
                if next.is_empty() {
                    self.bindings.remove(aor);
                } else {
                    *list = next;
                }
            }
        }
        Ok(self.lookup(aor, now))
    }

    /// The live bindings of `aor` at `now`, most preferred (highest q) first.
    pub fn lookup(&self, aor: &Aor, now: u64) -> Vec<Binding> {
        let mut v: Vec<Binding> = self
            .bindings
            .get(aor)
            .map(|l| l.iter().filter(|b| b.expires_at > now).cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| b.q.unwrap_or(1.0).total_cmp(&a.q.unwrap_or(1.0)));
        v
    }

    /// Users of `portal` with at least one live binding at `now`, except `except`.
    pub fn registered_users(&self, portal: &PortalId, except: Option<&str>, now: u64) -> u32 {
        let n = self
            .bindings
            .iter()
            .filter(|(aor, list)| {
                &aor.portal == portal && Some(aor.user.as_str()) != except && list.iter().any(|b| b.expires_at > now)
            })
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Drops every expired binding; returns how many went.
    pub fn expire(&mut self, now: u64) -> usize {
        let mut gone = 0;
        self.bindings.retain(|_, list| {
            let before = list.len();
            list.retain(|b| b.expires_at > now);
            gone += before - list.len();
            !list.is_empty()
        });
        gone
    }

    fn expire_aor(&mut self, aor: &Aor, now: u64) {
        if let Some(list) = self.bindings.get_mut(aor) {
            list.retain(|b| b.expires_at > now);
            if list.is_empty() {
                self.bindings.remove(aor);
            }
        }
    }

    /// Drops every binding learned over `source` (a WebSocket that closed:
    /// RFC 7118 §5, its contacts cannot be reached any more); returns how
    /// many went.
    pub fn remove_source(&mut self, source: Source) -> usize {
        self.retain_sources(|s| *s != source)
    }

    /// Keeps only the bindings whose source passes `keep`; returns how many
    /// went.
    pub fn retain_sources(&mut self, keep: impl Fn(&Source) -> bool) -> usize {
        let mut gone = 0;
        self.bindings.retain(|_, list| {
            let before = list.len();
            list.retain(|b| keep(&b.source));
            gone += before - list.len();
            !list.is_empty()
        });
        gone
    }

    /// Removes every binding of a portal (blocked or deleted).
    pub fn remove_portal(&mut self, portal: &PortalId) {
        self.bindings.retain(|aor, _| &aor.portal != portal);
    }

    /// Total live bindings (for metrics).
    pub fn len(&self) -> usize {
        self.bindings.values().map(Vec::len).sum()
    }

    /// Whether there are no bindings.
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }
}

/// RFC 3261 §10.3 compares contacts with the URI equality rules of §19.1.4;
/// scheme and host are case-insensitive, the user part is not. We compare
/// the text with the scheme and host part lowercased, which covers what
/// phones send (they repeat their Contact byte for byte).
fn same_contact(a: &str, b: &str) -> bool {
    fn norm(s: &str) -> (String, String) {
        let (scheme, rest) = s.split_once(':').unwrap_or(("", s));
        let (user, hostpart) = match rest.rsplit_once('@') {
            Some((u, h)) => (u.to_owned(), h.to_ascii_lowercase()),
            None => (String::new(), rest.to_ascii_lowercase()),
        };
        (format!("{}:{user}", scheme.to_ascii_lowercase()), hostpart)
    }
    a == b || norm(a) == norm(b)
}

#[cfg(test)]
mod tests;
