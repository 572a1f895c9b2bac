//! Transaction identity: what the caller tells about a message, and the
//! keys of RFC 3261 §17.1.3 (client) and §17.2.3 (server, with the RFC 2543
//! fallback).
//!
//! The caller extracts these few fields from its parsed message; this
//! module never sees a message type, so the parser can change freely.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;

use super::{Method, StatusCode};

/// The prefix of every RFC 3261 branch (§8.1.1.7). A request whose top Via
/// branch lacks it comes from an RFC 2543 element and is matched on its
/// dialog fields instead (§17.2.3).
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// What the server side needs to know about an incoming request.
///
/// Strings are compared byte for byte (retransmissions are byte-identical
/// copies), except `sent_by`, whose host part is case-insensitive (§20.42)
/// and is therefore compared in ASCII lowercase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo<'a> {
    /// The request method (also the CSeq method).
    pub method: Method,
    /// The `branch` parameter of the top Via, if any.
    pub branch: Option<&'a str>,
    /// The sent-by (`host[:port]`) of the top Via.
    pub sent_by: &'a str,
    /// The Request-URI, as received (RFC 2543 matching only).
    pub request_uri: &'a str,
    /// The Call-ID.
    pub call_id: &'a str,
    /// The CSeq sequence number.
    pub cseq: u32,
    /// The From tag (RFC 2543 matching, merged-request detection).
    pub from_tag: Option<&'a str>,
    /// The To tag: absent on out-of-dialog requests (merged-request
    /// detection applies only then).
    pub to_tag: Option<&'a str>,
}

impl RequestInfo<'_> {
    /// Whether the branch carries the RFC 3261 magic cookie, which makes
    /// it unique and the sole matching key (§17.2.3).
    pub fn is_rfc3261(&self) -> bool {
        self.branch.is_some_and(|b| b.starts_with(MAGIC_COOKIE))
    }
}

/// What the client side needs to know about an incoming response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseInfo<'a> {
    /// The status code.
    pub status: StatusCode,
    /// The `branch` parameter of the top Via, if any.
    pub branch: Option<&'a str>,
    /// The CSeq method: tells an INVITE's response from its CANCEL's,
    /// which share the branch (§17.1.3).
    pub method: Method,
}

/// Which side of the exchange a transaction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Sent the request: client INVITE or client non-INVITE.
    Client,
    /// Received the request: server INVITE or server non-INVITE.
    Server,
}

/// The identity of a transaction: its matching key (§17.1.3, §17.2.3).
///
/// Client: branch + method. Server with an RFC 3261 branch: branch +
/// sent-by + method. Server with an RFC 2543 request: Request-URI, To tag,
/// From tag, Call-ID, CSeq number, top Via (sent-by and branch, if any) and
/// method. In server keys ACK is recorded as INVITE, since it belongs to
/// the INVITE's transaction; CANCEL keeps its own method and so its own
/// transaction.
///
/// Cheap to clone (shared strings). The `Display` form is meant for logs.
///
/// Hashed once, when made: a key is looked up in several maps per message
/// (the layer's, the core's, the calls'), each of which would otherwise
/// run SipHash over its strings again. The stored hash is itself a SipHash
/// with a key random per process, so the maps stay as hard to flood with
/// colliding branches as with the default hasher.
#[derive(Clone)]
pub struct TsxKey {
    role: Role,
    method: Method,
    id: KeyId,
    hash: u64,
}

/// The per-process key of [`TsxKey`]'s stored hash.
fn key_hasher() -> &'static std::collections::hash_map::RandomState {
    static STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    STATE.get_or_init(std::collections::hash_map::RandomState::new)
}

impl TsxKey {
    fn new(role: Role, method: Method, id: KeyId) -> TsxKey {
        let hash = key_hasher().hash_one((role, &method, &id));
        TsxKey { role, method, id, hash }
    }
}

impl PartialEq for TsxKey {
    fn eq(&self, other: &Self) -> bool {
        // The hash first: unequal keys almost always differ there.
        self.hash == other.hash && self.role == other.role && self.method == other.method && self.id == other.id
    }
}

impl Eq for TsxKey {}

impl std::hash::Hash for TsxKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// A map keyed by transactions, hashed by the key's stored hash alone
/// ([`StoredHash`]).
///
/// griddle's map, not std's: a busy node keeps hundreds of thousands of
/// transactions (each 32 s after its answer), and std's map, when it
/// doubles, moves every entry into the new table in the one insert that
/// crossed the line: 15-30 ms during which the SIP core answered nothing
/// (a scheduler trace at 3000 calls a second). griddle moves a few
/// entries with each insert instead.
pub type TsxMap<V> = griddle::HashMap<TsxKey, V, KeyHashing>;

/// Builds [`StoredHash`] hashers: a [`TsxKey`]'s hash is already a keyed
/// SipHash of its fields (secret per process, so a peer cannot aim at a
/// bucket), and hashing that value again with a fresh SipHash on every
/// lookup (a dozen per call) bought nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyHashing;

impl BuildHasher for KeyHashing {
    type Hasher = StoredHash;

    fn build_hasher(&self) -> StoredHash {
        StoredHash(0)
    }
}

/// Gives back the `u64` written to it ([`TsxKey`] writes its stored hash);
/// other input (never a `TsxKey`'s) is folded in FNV-1a fashion.
#[derive(Debug, Clone, Copy)]
pub struct StoredHash(u64);

impl std::hash::Hasher for StoredHash {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl fmt::Debug for TsxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsxKey").field("role", &self.role).field("method", &self.method).field("id", &self.id).finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum KeyId {
    /// RFC 3261: the branch is unique; the sent-by guards against a
    /// client reusing another client's branch (server keys only).
    Branch { branch: Arc<str>, sent_by: Option<Arc<str>> },
    /// RFC 2543: no unique branch, so the request's dialog fields.
    Rfc2543(Arc<LegacyId>),
}

/// The fields RFC 2543 matching compares (§17.2.3). The top Via is compared
/// as its sent-by plus its branch, not as text: parameter order and
/// spacing may legitimately differ between hops' rewrites, while these two
/// identify the sending hop and its attempt.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct LegacyId {
    request_uri: Arc<str>,
    call_id: Arc<str>,
    cseq: u32,
    from_tag: Option<Arc<str>>,
    to_tag: Option<Arc<str>>,
    sent_by: Arc<str>,
    branch: Option<Arc<str>>,
}

impl LegacyId {
    /// The same request identity with another To tag: the key an ACK
    /// carries after the server's response set the tag.
    pub(super) fn with_to_tag(&self, to_tag: Option<&str>) -> LegacyId {
        LegacyId { to_tag: to_tag.map(Arc::from), ..self.clone() }
    }
}

/// The identity §8.2.2.2 compares for merged requests: From tag, Call-ID
/// and CSeq (number and method).
///
/// Hashed once, when made, as [`TsxKey`] is (same keyed SipHash), so its
/// map ([`MergeMap`]) hashes by the stored value: one entry per new INVITE
/// lives the transaction's 32 s, and a table of a hundred thousand that
/// rehashed its strings with SipHash when it grew held the SIP core for
/// some 50 ms (a scheduler trace at 3000 calls a second).
#[derive(Clone, Debug)]
pub(super) struct MergeId {
    from_tag: Arc<str>,
    call_id: Arc<str>,
    cseq: u32,
    method: Method,
    hash: u64,
}

impl PartialEq for MergeId {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && self.cseq == other.cseq
            && self.method == other.method
            && self.call_id == other.call_id
            && self.from_tag == other.from_tag
    }
}

impl Eq for MergeId {}

impl std::hash::Hash for MergeId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Merged-request identities, hashed by their stored hash ([`StoredHash`]).
pub(super) type MergeMap<V> = griddle::HashMap<MergeId, V, KeyHashing>;

impl MergeId {
    /// The merge identity of an out-of-dialog request, or `None` when the
    /// check does not apply: a To tag (in-dialog), no From tag (an RFC
    /// 2543 peer, where a false 482 would break calls), an ACK (no
    /// response to send) or a CANCEL (§9.2 already ties each copy to the
    /// INVITE copy that came its way, which got the 482 itself).
    pub(super) fn of(info: &RequestInfo<'_>) -> Option<MergeId> {
        if info.to_tag.is_some() || info.method.is_ack() || info.method.is_cancel() {
            return None;
        }
        let from_tag = info.from_tag?;
        let hash = key_hasher().hash_one((from_tag, info.call_id, info.cseq, &info.method));
        Some(MergeId {
            from_tag: from_tag.into(),
            call_id: info.call_id.into(),
            cseq: info.cseq,
            method: info.method.clone(),
            hash,
        })
    }
}

impl TsxKey {
    /// The key of a client transaction (§17.1.3).
    pub(super) fn client(method: Method, branch: &str) -> TsxKey {
        TsxKey::new(Role::Client, method, KeyId::Branch { branch: branch.into(), sent_by: None })
    }

    /// The key of the client transaction a response belongs to, if it
    /// names one (a response without branch cannot match).
    pub(super) fn for_response(info: &ResponseInfo<'_>) -> Option<TsxKey> {
        Some(TsxKey::client(info.method.clone(), info.branch?))
    }

    /// The key of the server transaction `info` belongs to, with the method
    /// replaced by `method` (ACK and CANCEL look for their INVITE).
    pub(super) fn server_as(info: &RequestInfo<'_>, method: Method) -> TsxKey {
        let sent_by: Arc<str> = info.sent_by.to_ascii_lowercase().into();
        let id = match info.branch {
            Some(branch) if info.is_rfc3261() => KeyId::Branch { branch: branch.into(), sent_by: Some(sent_by) },
            branch => KeyId::Rfc2543(Arc::new(LegacyId {
                request_uri: info.request_uri.into(),
                call_id: info.call_id.into(),
                cseq: info.cseq,
                from_tag: info.from_tag.map(Arc::from),
                to_tag: info.to_tag.map(Arc::from),
                sent_by,
                branch: branch.map(Arc::from),
            })),
        };
        TsxKey::new(Role::Server, method, id)
    }

    /// The key of the server transaction `info` belongs to (§17.2.3): ACK
    /// is looked up as INVITE.
    pub(super) fn server(info: &RequestInfo<'_>) -> TsxKey {
        let method = if info.method.is_ack() { Method::INVITE } else { info.method.clone() };
        TsxKey::server_as(info, method)
    }

    /// A server INVITE key for the same RFC 2543 request identity with
    /// another To tag (see [`LegacyId::with_to_tag`]).
    pub(super) fn with_legacy_id(&self, id: LegacyId) -> TsxKey {
        TsxKey::new(self.role, self.method.clone(), KeyId::Rfc2543(Arc::new(id)))
    }

    /// The RFC 2543 identity, for a server key built from a request
    /// without magic cookie.
    pub(super) fn legacy_id(&self) -> Option<&LegacyId> {
        match &self.id {
            KeyId::Rfc2543(id) => Some(id),
            KeyId::Branch { .. } => None,
        }
    }

    /// Client or server.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The transaction's method: INVITE for the ACK of a server INVITE.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The branch the key matches on, if any (an RFC 2543 request may
    /// have none).
    pub fn branch(&self) -> Option<&str> {
        match &self.id {
            KeyId::Branch { branch, .. } => Some(branch),
            KeyId::Rfc2543(id) => id.branch.as_deref(),
        }
    }

    /// Whether the key comes from the RFC 2543 fallback.
    pub fn is_rfc2543(&self) -> bool {
        self.legacy_id().is_some()
    }

    /// Whether the key is of an INVITE transaction.
    pub fn is_invite(&self) -> bool {
        self.method.is_invite()
    }
}

impl fmt::Display for TsxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = match self.role {
            Role::Client => "client",
            Role::Server => "server",
        };
        match &self.id {
            KeyId::Branch { branch, sent_by } => {
                write!(f, "{role} {} {branch}", self.method)?;
                if let Some(sent_by) = sent_by {
                    write!(f, " via {sent_by}")?;
                }
                Ok(())
            }
            KeyId::Rfc2543(id) => {
                write!(f, "{role} {} rfc2543 {} {} via {}", self.method, id.call_id, id.cseq, id.sent_by)
            }
        }
    }
}
