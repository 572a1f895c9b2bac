//! Header names and the raw header list of a message.
//!
//! Values are kept exactly as received (a [`Bytes`] slice of the message:
//! folds, escapes and unknown parameters included), so forwarding or
//! answering never re-escapes anything. Typed views are parsed on demand
//! by the accessors in [`typed`](super::typed).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::scan::is_token_str;

/// The name of an unknown header, as written (a token).
#[derive(Clone, Debug)]
pub struct OtherName(Bytes);

impl OtherName {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        super::scan::text(&self.0).unwrap_or("")
    }
}

macro_rules! known_headers {
    ($( $(#[$doc:meta])* $var:ident = $canon:literal, $lower:literal $(| $compact:literal)?; )*) => {
        /// A header name. Known names are matched case-insensitively and
        /// compact forms (RFC 3261 §7.3.3, RFC 3265, RFC 3515, ...) map to
        /// their long names; any other token is kept as written.
        #[derive(Clone)]
        pub enum HeaderName {
            $( $(#[$doc])* $var, )*
            /// Any other header, as written. Build one with
            /// [`HeaderName::new`].
            Other(OtherName),
        }

        impl HeaderName {
            /// The long name (canonical spelling) or the name as written for
            /// unknown headers.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$var => $canon, )*
                    Self::Other(o) => o.as_str(),
                }
            }

            fn lookup_lower(lower: &[u8]) -> Option<Self> {
                Some(match lower {
                    $( $lower $(| $compact)? => Self::$var, )*
                    _ => return None,
                })
            }
        }
    };
}

known_headers! {
    /// Via (compact `v`).
    Via = "Via", b"via" | b"v";
    /// From (compact `f`).
    From = "From", b"from" | b"f";
    /// To (compact `t`).
    To = "To", b"to" | b"t";
    /// Call-ID (compact `i`).
    CallId = "Call-ID", b"call-id" | b"i";
    /// CSeq.
    CSeq = "CSeq", b"cseq";
    /// Max-Forwards.
    MaxForwards = "Max-Forwards", b"max-forwards";
    /// Contact (compact `m`).
    Contact = "Contact", b"contact" | b"m";
    /// Route.
    Route = "Route", b"route";
    /// Record-Route.
    RecordRoute = "Record-Route", b"record-route";
    /// Content-Length (compact `l`).
    ContentLength = "Content-Length", b"content-length" | b"l";
    /// Content-Type (compact `c`).
    ContentType = "Content-Type", b"content-type" | b"c";
    /// Content-Encoding (compact `e`).
    ContentEncoding = "Content-Encoding", b"content-encoding" | b"e";
    /// Content-Disposition.
    ContentDisposition = "Content-Disposition", b"content-disposition";
    /// Expires.
    Expires = "Expires", b"expires";
    /// Min-Expires.
    MinExpires = "Min-Expires", b"min-expires";
    /// Require.
    Require = "Require", b"require";
    /// Proxy-Require.
    ProxyRequire = "Proxy-Require", b"proxy-require";
    /// Supported (compact `k`).
    Supported = "Supported", b"supported" | b"k";
    /// Unsupported.
    Unsupported = "Unsupported", b"unsupported";
    /// Allow.
    Allow = "Allow", b"allow";
    /// Authorization.
    Authorization = "Authorization", b"authorization";
    /// Proxy-Authorization.
    ProxyAuthorization = "Proxy-Authorization", b"proxy-authorization";
    /// WWW-Authenticate.
    WwwAuthenticate = "WWW-Authenticate", b"www-authenticate";
    /// Proxy-Authenticate.
    ProxyAuthenticate = "Proxy-Authenticate", b"proxy-authenticate";
    /// Authentication-Info.
    AuthenticationInfo = "Authentication-Info", b"authentication-info";
    /// Accept.
    Accept = "Accept", b"accept";
    /// Accept-Encoding.
    AcceptEncoding = "Accept-Encoding", b"accept-encoding";
    /// Accept-Language.
    AcceptLanguage = "Accept-Language", b"accept-language";
    /// Diversion (RFC 5806).
    Diversion = "Diversion", b"diversion";
    /// History-Info (RFC 7044).
    HistoryInfo = "History-Info", b"history-info";
    /// Warning.
    Warning = "Warning", b"warning";
    /// Retry-After.
    RetryAfter = "Retry-After", b"retry-after";
    /// Subject (compact `s`).
    Subject = "Subject", b"subject" | b"s";
    /// Date.
    Date = "Date", b"date";
    /// Timestamp.
    Timestamp = "Timestamp", b"timestamp";
    /// User-Agent.
    UserAgent = "User-Agent", b"user-agent";
    /// Server.
    Server = "Server", b"server";
    /// Organization.
    Organization = "Organization", b"organization";
    /// Reason (RFC 3326).
    Reason = "Reason", b"reason";
    /// RSeq (RFC 3262).
    RSeq = "RSeq", b"rseq";
    /// RAck (RFC 3262).
    RAck = "RAck", b"rack";
    /// Event (compact `o`, RFC 6665).
    Event = "Event", b"event" | b"o";
    /// Allow-Events (compact `u`).
    AllowEvents = "Allow-Events", b"allow-events" | b"u";
    /// Subscription-State.
    SubscriptionState = "Subscription-State", b"subscription-state";
    /// Refer-To (compact `r`, RFC 3515).
    ReferTo = "Refer-To", b"refer-to" | b"r";
    /// Referred-By (compact `b`, RFC 3892).
    ReferredBy = "Referred-By", b"referred-by" | b"b";
    /// Replaces (RFC 3891).
    Replaces = "Replaces", b"replaces";
    /// Session-Expires (compact `x`, RFC 4028).
    SessionExpires = "Session-Expires", b"session-expires" | b"x";
    /// Min-SE (RFC 4028).
    MinSe = "Min-SE", b"min-se";
    /// Identity (compact `y`).
    Identity = "Identity", b"identity" | b"y";
    /// Accept-Contact (compact `a`).
    AcceptContact = "Accept-Contact", b"accept-contact" | b"a";
    /// Reject-Contact (compact `j`).
    RejectContact = "Reject-Contact", b"reject-contact" | b"j";
    /// Request-Disposition (compact `d`).
    RequestDisposition = "Request-Disposition", b"request-disposition" | b"d";
    /// Path (RFC 3327).
    Path = "Path", b"path";
    /// Privacy (RFC 3323).
    Privacy = "Privacy", b"privacy";
    /// P-Asserted-Identity (RFC 3325).
    PAssertedIdentity = "P-Asserted-Identity", b"p-asserted-identity";
    /// P-Preferred-Identity (RFC 3325).
    PPreferredIdentity = "P-Preferred-Identity", b"p-preferred-identity";
}

/// Longest known header name (`p-preferred-identity`, 20 bytes) rounded up.
const MAX_KNOWN_LEN: usize = 24;

impl HeaderName {
    /// The known header this name denotes (any case, compact or long).
    fn lookup(name: &[u8]) -> Option<Self> {
        let mut buf = [0u8; MAX_KNOWN_LEN];
        let lower = buf.get_mut(..name.len())?;
        for (d, s) in lower.iter_mut().zip(name) {
            *d = s.to_ascii_lowercase();
        }
        Self::lookup_lower(lower)
    }

    /// Classifies a header name as found on the wire. Returns `None` when it
    /// is not a `token`.
    pub fn from_bytes(name: &[u8]) -> Option<Self> {
        Self::lookup(name).or_else(|| is_token_str(name).then(|| Self::Other(OtherName(Bytes::copy_from_slice(name)))))
    }

    /// Like [`from_bytes`](Self::from_bytes) for a name that is a slice of
    /// a message buffer (no copy for unknown names).
    pub(crate) fn from_shared(buf: &Bytes, name: &[u8]) -> Option<Self> {
        Self::lookup(name).or_else(|| is_token_str(name).then(|| Self::Other(OtherName(buf.slice_ref(name)))))
    }

    /// Parses a header name given by the program (`"X-Portal"`, `"i"`).
    pub fn new(name: &str) -> Result<Self, super::BuildError> {
        Self::from_bytes(name.as_bytes()).ok_or(super::BuildError::InvalidHeaderName)
    }
}

impl PartialEq for HeaderName {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Other(a), Self::Other(b)) => a.0.eq_ignore_ascii_case(&b.0),
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

impl Eq for HeaderName {}

impl fmt::Debug for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One header line: its name and raw value.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    name: HeaderName,
    value: Bytes,
}

impl Header {
    /// A header from parts already validated by the caller.
    pub(crate) fn new_unchecked(name: HeaderName, value: Bytes) -> Self {
        Self { name, value }
    }

    /// The name.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    /// The value exactly as received: leading and trailing whitespace
    /// removed, folds (CRLF + SP/HT) inside kept.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The value as a shared buffer (cheap to clone).
    pub fn value_bytes(&self) -> &Bytes {
        &self.value
    }

    /// The value as text when it is UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        super::scan::text(&self.value)
    }
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?}", self.name, String::from_utf8_lossy(&self.value))
    }
}

/// The header lines of a message, in order.
#[derive(Clone, Default)]
pub struct Headers {
    list: Vec<Header>,
    /// Where the From and To tags are, found on the first ask: a call asks
    /// for them some twenty times across its messages (transaction
    /// matching, dialog and leg lookups), each time a scan of every line
    /// for the one From or To, then of its parameters. Any change to the
    /// lines forgets them.
    tags: TagCache,
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.list == other.list
    }
}

impl Eq for Headers {}

/// Where the From and To tags are once asked for, each packed in a word:
/// 0 not known yet, [`NO_TAG`] known to have none, else a tag's
/// place. Written by `&self` readers (two may race and store the same
/// value), so atomics; only a well-formed header's answer is kept, an
/// error is found again on every ask.
#[derive(Default)]
struct TagCache {
    from: AtomicU64,
    to: AtomicU64,
}

impl Clone for TagCache {
    fn clone(&self) -> Self {
        TagCache {
            from: AtomicU64::new(self.from.load(Ordering::Relaxed)),
            to: AtomicU64::new(self.to.load(Ordering::Relaxed)),
        }
    }
}

/// The header has no tag.
const NO_TAG: u64 = 1;
/// Marks a packed place: line, start and end, 21 bits each.
const TAG_AT: u64 = 1 << 63;
const FIELD: u64 = (1 << 21) - 1;

impl Headers {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn with_capacity(n: usize) -> Self {
        Self { list: Vec::with_capacity(n), tags: TagCache::default() }
    }

    pub(crate) fn push_unchecked(&mut self, header: Header) {
        // Appended: the lines before keep their places, and only a second
        // From or To changes an answer.
        if matches!(header.name, HeaderName::From | HeaderName::To) {
            self.forget_tags();
        }
        self.list.push(header);
    }

    pub(crate) fn replace_at(&mut self, pos: usize, header: Header) {
        self.forget_tags();
        if let Some(slot) = self.list.get_mut(pos) {
            *slot = header;
        }
    }

    /// Number of header lines.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// No header at all.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// All header lines in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Header> {
        self.list.iter()
    }

    /// The first line with this name.
    pub fn get(&self, name: &HeaderName) -> Option<&Header> {
        self.list.iter().find(|h| h.name == *name)
    }

    /// All lines with this name, in order.
    pub fn get_all<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a Header> + use<'a> {
        let name = name.clone();
        self.list.iter().filter(move |h| h.name == name)
    }

    /// Number of lines with this name.
    pub fn count(&self, name: &HeaderName) -> usize {
        self.get_all(name).count()
    }

    /// True when at least one line has this name.
    pub fn contains(&self, name: &HeaderName) -> bool {
        self.get(name).is_some()
    }

    /// Appends a line. The value must not contain CR or LF.
    pub fn push(&mut self, name: HeaderName, value: impl AsRef<[u8]>) -> Result<(), super::BuildError> {
        if matches!(name, HeaderName::From | HeaderName::To) {
            self.forget_tags();
        }
        let value = checked_value(&name, value.as_ref())?;
        self.list.push(Header { name, value });
        Ok(())
    }

    /// Inserts a line before all others (for a new top Via).
    pub fn push_front(&mut self, name: HeaderName, value: impl AsRef<[u8]>) -> Result<(), super::BuildError> {
        self.forget_tags();
        let value = checked_value(&name, value.as_ref())?;
        self.list.insert(0, Header { name, value });
        Ok(())
    }

    /// Keeps the lines for which `keep` says so, in order.
    pub fn retain(&mut self, keep: impl FnMut(&Header) -> bool) {
        self.forget_tags();
        self.list.retain(keep);
    }

    /// Copies every value into one buffer of its own, sized to fit, and
    /// the list to a vector of its length: for lines held long, which
    /// otherwise keep alive the whole buffer they were sliced from (a
    /// received datagram, a built message's every line) and the list's
    /// spare capacity.
    pub(crate) fn compact(&mut self) {
        self.forget_tags();
        let mut buf = Vec::with_capacity(self.list.iter().map(|h| h.value.len()).sum());
        for h in &self.list {
            buf.extend_from_slice(&h.value);
        }
        let buf = Bytes::from(buf);
        let mut list = Vec::with_capacity(self.list.len());
        let mut at = 0;
        for h in self.list.drain(..) {
            let end = at + h.value.len();
            list.push(Header { name: h.name, value: buf.slice(at..end) });
            at = end;
        }
        self.list = list;
    }

    /// Removes every line with this name; returns how many were removed.
    pub fn remove_all(&mut self, name: &HeaderName) -> usize {
        self.forget_tags();
        let before = self.list.len();
        self.list.retain(|h| h.name != *name);
        before - self.list.len()
    }

    /// Replaces every line with this name by one line (appended at the
    /// position of the first removed line, or at the end).
    pub fn set(&mut self, name: HeaderName, value: impl AsRef<[u8]>) -> Result<(), super::BuildError> {
        self.forget_tags();
        let value = checked_value(&name, value.as_ref())?;
        let pos = self.list.iter().position(|h| h.name == name);
        self.list.retain(|h| h.name != name);
        let header = Header { name, value };
        match pos {
            Some(p) if p <= self.list.len() => self.list.insert(p, header),
            _ => self.list.push(header),
        }
        Ok(())
    }

    /// Copies every line with this name from `other`, in order.
    pub fn copy_from(&mut self, other: &Headers, name: &HeaderName) {
        self.forget_tags();
        for h in other.get_all(name) {
            self.list.push(h.clone());
        }
    }
}

impl Headers {
    /// The one line with this name: its index, or `Err(true)` when there
    /// are more, `Err(false)` when there is none.
    pub(crate) fn single_index(&self, name: &HeaderName) -> Result<usize, bool> {
        let mut found = None;
        for (i, h) in self.list.iter().enumerate() {
            if h.name == *name {
                if found.is_some() {
                    return Err(true);
                }
                found = Some(i);
            }
        }
        found.ok_or(false)
    }

    /// Forgets where the tags are: called by everything that changes the
    /// lines in a way that can move a From or To or change its answer.
    fn forget_tags(&mut self) {
        *self.tags.from.get_mut() = 0;
        *self.tags.to.get_mut() = 0;
    }

    /// The line at `i`.
    pub(crate) fn at(&self, i: usize) -> Option<&Header> {
        self.list.get(i)
    }

    /// The From tag's (`from`) or To tag's remembered answer, if asked
    /// before.
    pub(crate) fn cached_tag(&self, from: bool) -> Option<Option<&str>> {
        let cell = if from { &self.tags.from } else { &self.tags.to };
        let v = cell.load(Ordering::Relaxed);
        if v == 0 {
            return None;
        }
        if v == NO_TAG {
            return Some(None);
        }
        let (line, start, end) = ((v >> 42) & FIELD, (v >> 21) & FIELD, v & FIELD);
        let h = self.list.get(usize::try_from(line).ok()?)?;
        let tag = h.value.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)?;
        // Tags are tokens: ASCII, checked when found.
        Some(super::scan::text(tag))
    }

    /// Remembers the From (`from`) or To tag's answer: `tag`, found in line
    /// `line`'s value, or none. A tag not inside that value, or too far
    /// into a huge message to pack, is not remembered.
    pub(crate) fn cache_tag(&self, from: bool, line: usize, tag: Option<&str>) {
        let cell = if from { &self.tags.from } else { &self.tags.to };
        let v = match tag {
            None => NO_TAG,
            Some(t) => {
                let Some(h) = self.list.get(line) else { return };
                let start = t.as_ptr().addr().wrapping_sub(h.value.as_ptr().addr());
                let end = start.wrapping_add(t.len());
                if start > h.value.len() || end > h.value.len() {
                    return;
                }
                let (Ok(line), Ok(start), Ok(end)) = (u64::try_from(line), u64::try_from(start), u64::try_from(end))
                else {
                    return;
                };
                if line > FIELD || end > FIELD {
                    return;
                }
                TAG_AT | line << 42 | start << 21 | end
            }
        };
        cell.store(v, Ordering::Relaxed);
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.list.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = &'a Header;
    type IntoIter = std::slice::Iter<'a, Header>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

/// Values given by the program may not contain CR or LF (no header
/// injection, no folding in what we send).
fn checked_value(name: &HeaderName, value: &[u8]) -> Result<Bytes, super::BuildError> {
    if memchr::memchr2(b'\r', b'\n', value).is_some() {
        return Err(super::BuildError::InvalidHeaderValue { name: name.clone() });
    }
    Ok(Bytes::copy_from_slice(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_case() {
        assert_eq!(HeaderName::from_bytes(b"v"), Some(HeaderName::Via));
        assert_eq!(HeaderName::from_bytes(b"VIA"), Some(HeaderName::Via));
        assert_eq!(HeaderName::from_bytes(b"i"), Some(HeaderName::CallId));
        assert_eq!(HeaderName::from_bytes(b"L"), Some(HeaderName::ContentLength));
        assert_eq!(HeaderName::from_bytes(b"k"), Some(HeaderName::Supported));
        assert_eq!(HeaderName::from_bytes(b"e"), Some(HeaderName::ContentEncoding));
        assert_eq!(HeaderName::from_bytes(b"s"), Some(HeaderName::Subject));
        let other = HeaderName::from_bytes(b"C%6Fntact").unwrap();
        assert_ne!(other, HeaderName::Contact);
        assert_eq!(other.as_str(), "C%6Fntact");
        assert_eq!(other, HeaderName::new("c%6fNTACT").unwrap());
        assert_eq!(HeaderName::from_bytes(b"Bad Name"), None);
        assert_eq!(HeaderName::from_bytes(b""), None);
    }

    #[test]
    fn set_and_remove() {
        let mut h = Headers::new();
        h.push(HeaderName::Via, "a").unwrap();
        h.push(HeaderName::To, "b").unwrap();
        h.push(HeaderName::Via, "c").unwrap();
        h.set(HeaderName::Via, "d").unwrap();
        assert_eq!(h.count(&HeaderName::Via), 1);
        assert_eq!(h.iter().next().map(|x| x.value()), Some(&b"d"[..]));
        assert!(h.push(HeaderName::To, "x\r\nVia: y").is_err());
        assert_eq!(h.remove_all(&HeaderName::To), 1);
    }
}
