//! SIP request methods.

use std::fmt;

use super::scan::is_token_str;

/// A request method. Methods are case-sensitive (RFC 3261 §7.1): `invite`
/// is an extension method, not INVITE.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// INVITE (RFC 3261).
    Invite,
    /// ACK (RFC 3261).
    Ack,
    /// BYE (RFC 3261).
    Bye,
    /// CANCEL (RFC 3261).
    Cancel,
    /// OPTIONS (RFC 3261).
    Options,
    /// REGISTER (RFC 3261).
    Register,
    /// PRACK (RFC 3262).
    Prack,
    /// SUBSCRIBE (RFC 6665).
    Subscribe,
    /// NOTIFY (RFC 6665).
    Notify,
    /// PUBLISH (RFC 3903).
    Publish,
    /// INFO (RFC 6086).
    Info,
    /// REFER (RFC 3515).
    Refer,
    /// MESSAGE (RFC 3428).
    Message,
    /// UPDATE (RFC 3311).
    Update,
    /// Any other `token` (RFC 3261 §25.1 token characters, `%` included).
    Extension(String),
}

impl Method {
    /// Parses a method token; `None` when it is not a `token`.
    pub fn from_bytes(s: &[u8]) -> Option<Self> {
        Some(match s {
            b"INVITE" => Self::Invite,
            b"ACK" => Self::Ack,
            b"BYE" => Self::Bye,
            b"CANCEL" => Self::Cancel,
            b"OPTIONS" => Self::Options,
            b"REGISTER" => Self::Register,
            b"PRACK" => Self::Prack,
            b"SUBSCRIBE" => Self::Subscribe,
            b"NOTIFY" => Self::Notify,
            b"PUBLISH" => Self::Publish,
            b"INFO" => Self::Info,
            b"REFER" => Self::Refer,
            b"MESSAGE" => Self::Message,
            b"UPDATE" => Self::Update,
            other if is_token_str(other) => Self::Extension(String::from_utf8_lossy(other).into_owned()),
            _ => return None,
        })
    }

    /// The method name as sent on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Invite => "INVITE",
            Self::Ack => "ACK",
            Self::Bye => "BYE",
            Self::Cancel => "CANCEL",
            Self::Options => "OPTIONS",
            Self::Register => "REGISTER",
            Self::Prack => "PRACK",
            Self::Subscribe => "SUBSCRIBE",
            Self::Notify => "NOTIFY",
            Self::Publish => "PUBLISH",
            Self::Info => "INFO",
            Self::Refer => "REFER",
            Self::Message => "MESSAGE",
            Self::Update => "UPDATE",
            Self::Extension(s) => s,
        }
    }

    /// True for [`Method::Extension`].
    pub fn is_extension(&self) -> bool {
        matches!(self, Self::Extension(_))
    }
}

impl std::str::FromStr for Method {
    type Err = super::error::ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(s.as_bytes()).ok_or(super::error::ValueError::InvalidMethod)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_and_extension() {
        assert_eq!(Method::from_bytes(b"INVITE"), Some(Method::Invite));
        assert_eq!(Method::from_bytes(b"invite"), Some(Method::Extension("invite".into())));
        assert_eq!(Method::from_bytes(b"RE%47IST%45R"), Some(Method::Extension("RE%47IST%45R".into())));
        assert_eq!(Method::from_bytes(b"FOOBAR").map(|m| m.to_string()), Some("FOOBAR".into()));
        assert_eq!(Method::from_bytes(b"A@B"), None);
        assert_eq!(Method::from_bytes(b""), None);
    }
}
