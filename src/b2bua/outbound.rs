//! Outbound calls: portal users calling out through their PBX. What is
//! pure here: the portal's outbound trunks in order, the dialled-number
//! rules of a trunk, the caller-ID headers, the users' outbound
//! permissions, and which failures move a call to the next trunk.

use std::net::SocketAddr;
use std::time::Duration;

use crate::admission::PortalId;
use crate::config::{CallerIdHeader, LoadedTrunk, NumberFormat};
use crate::transport::Transport;

/// A trunk's outbound side, from `[trunk.outbound]`.
#[derive(Debug)]
pub struct OutboundTrunk {
    /// The trunk's name.
    pub name: String,
    /// Its portal (`*`: any portal).
    pub portal: PortalId,
    /// Lower first.
    pub priority: u32,
    /// Transport toward the PBX.
    pub transport: Transport,
    /// Host as written (Request-URI, To).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Resolved address.
    pub addr: SocketAddr,
    /// Outbound proxy: where INVITEs go (transport, address) and its Route.
    pub proxy: Option<(Transport, SocketAddr, String)>,
    /// Digest credentials for the PBX's challenges.
    pub credentials: Option<Credentials>,
    /// Caller number when the user has none.
    pub caller_number: Option<String>,
    /// Headers that carry the caller's number.
    pub caller_id: Vec<CallerIdHeader>,
    /// Dialled-number rules.
    pub rules: NumberRules,
    /// No answer at all within this: the next trunk.
    pub invite_timeout: Duration,
    /// Ringing at most this long.
    pub answer_timeout: Duration,
    /// OPTIONS ping interval (zero: none).
    pub options_interval: Duration,
    /// Cloud PBX: the registration this trunk keeps.
    pub registration: Option<crate::config::LoadedRegistration>,
}

/// A trunk's digest credentials. `Debug` never shows the password.
#[derive(Clone)]
pub struct Credentials {
    /// Username.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<secret>").finish()
    }
}

impl OutboundTrunk {
    /// From a loaded trunk with `[trunk.outbound]`.
    pub fn from_loaded(lt: &LoadedTrunk) -> Option<OutboundTrunk> {
        let o = lt.trunk.outbound.as_ref()?;
        let r = lt.outbound.as_ref()?;
        Some(OutboundTrunk {
            name: lt.trunk.name.get_ref().clone(),
            portal: PortalId::new(lt.trunk.portal.get_ref().clone()),
            priority: o.priority,
            transport: r.transport,
            host: r.host.clone(),
            port: r.port,
            addr: r.addr,
            proxy: r.proxy.as_ref().map(|(t, h, p, a)| (*t, *a, format!("<sip:{h}:{p}{};lr>", t.uri_param()))),
            credentials: r.credentials.clone().map(|(username, password)| Credentials { username, password }),
            caller_number: o.caller_number.as_ref().map(|n| n.get_ref().clone()),
            caller_id: o.caller_id.clone(),
            rules: NumberRules {
                strip_prefix: o.strip_prefix.as_ref().map(|s| s.get_ref().clone()),
                format: o.number_format,
                country_code: o.country_code.as_ref().map(|c| c.get_ref().clone()).unwrap_or_default(),
                national_prefix: o.national_prefix.clone(),
                international_prefix: o.international_prefix.clone(),
                add_prefix: o.add_prefix.as_ref().map(|s| s.get_ref().clone()),
            },
            invite_timeout: Duration::from_secs(u64::from(o.invite_timeout_s)),
            answer_timeout: Duration::from_secs(u64::from(o.answer_timeout_s)),
            options_interval: Duration::from_secs(u64::from(o.options_interval_s)),
            registration: r.registration.clone(),
        })
    }

    /// The Request-URI (and To URI) for `number` on this trunk.
    pub fn uri(&self, number: &str) -> String {
        let transport = if self.transport == Transport::Tcp { ";transport=tcp" } else { "" };
        if self.port == 5060 {
            format!("sip:{number}@{}{transport}", self.host)
        } else {
            format!("sip:{number}@{}:{}{transport}", self.host, self.port)
        }
    }

    /// The caller-ID headers for `number`, as the trunk asks. A withheld
    /// number (the caller sent `Privacy: id` or an anonymous From) goes
    /// as an anonymous From with `Privacy: id` (RFC 3323, RFC 3325 §7); the
    /// asserted identity, if the trunk takes one, still names the caller
    /// for the PBX (which withholds it from the callee).
    pub fn caller_headers(&self, number: &str, withheld: bool, display: Option<&str>) -> CallerId {
        let host = &self.host;
        let name = match display {
            Some(d) if !withheld && !d.is_empty() => format!("\"{}\" ", d.replace(['"', '\\'], "")),
            _ => String::new(),
        };
        let mut extra = Vec::new();
        if self.caller_id.contains(&CallerIdHeader::Pai) {
            extra.push(("P-Asserted-Identity".to_owned(), format!("{name}<sip:{number}@{host}>")));
        }
        if self.caller_id.contains(&CallerIdHeader::Rpid) {
            let privacy = if withheld { "full" } else { "off" };
            extra.push((
                "Remote-Party-ID".to_owned(),
                format!("{name}<sip:{number}@{host}>;party=calling;screen=yes;privacy={privacy}"),
            ));
        }
        if withheld {
            extra.push(("Privacy".to_owned(), "id".to_owned()));
            return CallerId { from: "\"Anonymous\" <sip:anonymous@anonymous.invalid>".to_owned(), extra };
        }
        let from_user = if self.caller_id.contains(&CallerIdHeader::From) { number } else { "anonymous" };
        CallerId { from: format!("{name}<sip:{from_user}@{host}>"), extra }
    }
}

/// From, and the other caller-ID headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerId {
    /// The From header value (without its tag).
    pub from: String,
    /// Other headers: P-Asserted-Identity, Remote-Party-ID, Privacy.
    pub extra: Vec<(String, String)>,
}

/// A trunk's dialled-number rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NumberRules {
    /// Removed first when the number starts with it.
    pub strip_prefix: Option<String>,
    /// Format conversion.
    pub format: NumberFormat,
    /// Country code (digits).
    pub country_code: String,
    /// National trunk prefix (`0`).
    pub national_prefix: String,
    /// International call prefix (`00`).
    pub international_prefix: String,
    /// Added last.
    pub add_prefix: Option<String>,
}

impl NumberRules {
    /// `number` as it goes to the PBX.
    pub fn apply(&self, number: &str) -> String {
        let mut n = match &self.strip_prefix {
            Some(p) if !p.is_empty() && number.len() > p.len() && number.starts_with(p.as_str()) => {
                number[p.len()..].to_owned()
            }
            _ => number.to_owned(),
        };
        let cc = self.country_code.as_str();
        let (np, ip) = (self.national_prefix.as_str(), self.international_prefix.as_str());
        n = match self.format {
            NumberFormat::AsDialled => n,
            NumberFormat::E164 => {
                if n.starts_with('+') {
                    n
                } else if let Some(rest) = n.strip_prefix(ip) {
                    // The international prefix alone is no number: as dialled.
                    if rest.is_empty() { n } else { format!("+{rest}") }
                } else if !np.is_empty() && n.len() > np.len() && n.starts_with(np) {
                    format!("+{cc}{}", &n[np.len()..])
                } else {
                    // Short numbers (services, extensions) stay as dialled.
                    n
                }
            }
            NumberFormat::National => match n.strip_prefix('+') {
                Some(rest) if rest.starts_with(cc) && rest.len() > cc.len() => format!("{np}{}", &rest[cc.len()..]),
                Some(rest) => format!("{ip}{rest}"),
                None => n,
            },
        };
        match &self.add_prefix {
            Some(p) => format!("{p}{n}"),
            None => n,
        }
    }
}

/// Whether a failure of one trunk moves the call to the next: no answer
/// (408, our INVITE timeout), a transport error, a server failure (5xx),
/// or a global failure (6xx) that is not the callee's own answer — 600
/// Busy Everywhere and 603 Decline are, like 486; 604, 606, 607, 608 may
/// be one carrier's view. A 4xx is the callee's or the number's answer:
/// another trunk would give the same (RFC 3261 §21.4).
pub fn fails_over(status: u16) -> bool {
    status == 408 || (500..=599).contains(&status) || ((600..=699).contains(&status) && !matches!(status, 600 | 603))
}

/// A portal user's outbound permission (`user set --outbound`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permission {
    /// Any number.
    Any,
    /// No outbound calls.
    None,
    /// Numbers matching one of these: exact, or a prefix ending in `*`.
    Patterns(Vec<String>),
}

impl Permission {
    /// Parses the stored form: `any`, `none`, or patterns separated by
    /// commas (`+44*,0800*,112`).
    pub fn parse(s: &str) -> Result<Permission, String> {
        match s.trim() {
            "" | "any" => Ok(Permission::Any),
            "none" => Ok(Permission::None),
            list => {
                let mut out = Vec::new();
                for p in list.split(',').map(str::trim) {
                    let body = p.strip_suffix('*').unwrap_or(p);
                    let digits = body.strip_prefix('+').unwrap_or(body);
                    if p.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'#' || b == b'*') {
                        return Err(format!(
                            "outbound permission `{p}`: expected any, none, or numbers and prefixes ending in `*` separated by commas"
                        ));
                    }
                    out.push(p.to_owned());
                }
                Ok(Permission::Patterns(out))
            }
        }
    }

    /// Whether `number` (as dialled) may be called.
    pub fn allows(&self, number: &str) -> bool {
        match self {
            Permission::Any => true,
            Permission::None => false,
            Permission::Patterns(list) => list.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => number.starts_with(prefix),
                None => number == p,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(format: NumberFormat) -> NumberRules {
        NumberRules {
            format,
            country_code: "44".into(),
            national_prefix: "0".into(),
            international_prefix: "00".into(),
            ..NumberRules::default()
        }
    }

    #[test]
    fn e164_conversion_at_its_edges() {
        let r = rules(NumberFormat::E164);
        assert_eq!(r.apply("02079460000"), "+442079460000", "national → E.164");
        assert_eq!(r.apply("+442079460000"), "+442079460000", "already E.164");
        assert_eq!(r.apply("0033123456789"), "+33123456789", "international prefix → +");
        assert_eq!(r.apply("999"), "999", "a service number stays");
        assert_eq!(r.apply("0"), "0", "the prefix alone is no number");
        assert_eq!(r.apply("00"), "00", "the international prefix alone stays");
    }

    #[test]
    fn national_conversion_at_its_edges() {
        let r = rules(NumberFormat::National);
        assert_eq!(r.apply("+442079460000"), "02079460000", "own country → national");
        assert_eq!(r.apply("+33123456789"), "0033123456789", "another country → international prefix");
        assert_eq!(r.apply("02079460000"), "02079460000", "already national");
        assert_eq!(r.apply("+44"), "0044", "the country code alone is no national number");
        let nanp = NumberRules {
            country_code: "1".into(),
            national_prefix: "1".into(),
            international_prefix: "011".into(),
            ..r
        };
        assert_eq!(nanp.apply("+12025550100"), "12025550100");
        assert_eq!(nanp.apply("+442079460000"), "011442079460000");
    }

    #[test]
    fn strip_then_convert_then_add() {
        let r = NumberRules {
            strip_prefix: Some("9".into()),
            add_prefix: Some("1234#".into()),
            ..rules(NumberFormat::E164)
        };
        assert_eq!(r.apply("902079460000"), "1234#+442079460000");
        // Only a leading prefix is stripped, and never the whole number.
        assert_eq!(r.apply("02079460009"), "1234#+442079460009");
        assert_eq!(r.apply("9"), "1234#9");
        let plain = NumberRules::default();
        assert_eq!(plain.apply("+15550001"), "+15550001", "no rules: as dialled");
    }

    #[test]
    fn failover_on_no_answer_transport_server_and_global_failures_but_not_the_callees_answers() {
        for s in [408, 500, 502, 503, 504, 580, 604, 606, 607, 608] {
            assert!(fails_over(s), "{s}");
        }
        for s in [400, 403, 404, 480, 484, 486, 487, 488, 600, 603] {
            assert!(!fails_over(s), "{s}");
        }
    }

    #[test]
    fn permissions() {
        assert_eq!(Permission::parse("any"), Ok(Permission::Any));
        assert_eq!(Permission::parse(""), Ok(Permission::Any));
        let none = Permission::parse("none").expect("none");
        assert!(!none.allows("112"));
        let p = Permission::parse("+44*, 0800*,112").expect("patterns");
        assert!(p.allows("+442079460000"));
        assert!(p.allows("08001111"));
        assert!(p.allows("112"));
        assert!(!p.allows("1120"), "exact means exact");
        assert!(!p.allows("+33123"));
        assert!(!p.allows("0900123"));
        assert!(Permission::parse("+44*,abc").is_err());
        assert!(Permission::parse("+44*,").is_err());
    }

    fn trunk(caller_id: Vec<CallerIdHeader>) -> OutboundTrunk {
        OutboundTrunk {
            name: "t".into(),
            portal: PortalId::new("p".to_owned()),
            priority: 1,
            transport: Transport::Udp,
            host: "pbx.example.com".into(),
            port: 5080,
            addr: "192.0.2.1:5080".parse().expect("addr"),
            proxy: None,
            credentials: Some(Credentials { username: "u".into(), password: "hunter2".into() }),
            caller_number: None,
            caller_id,
            rules: NumberRules::default(),
            invite_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(120),
            options_interval: Duration::ZERO,
            registration: None,
        }
    }

    #[test]
    fn caller_id_headers_as_the_trunk_asks() {
        let t = trunk(vec![CallerIdHeader::From, CallerIdHeader::Pai]);
        let c = t.caller_headers("+15550100", false, Some("Alice \"A\""));
        assert_eq!(c.from, "\"Alice A\" <sip:+15550100@pbx.example.com>");
        assert_eq!(
            c.extra,
            vec![("P-Asserted-Identity".to_owned(), "\"Alice A\" <sip:+15550100@pbx.example.com>".to_owned())]
        );
        let t = trunk(vec![CallerIdHeader::Rpid]);
        let c = t.caller_headers("+15550100", false, None);
        assert_eq!(c.from, "<sip:anonymous@pbx.example.com>", "the number only where the trunk asks");
        assert_eq!(c.extra.len(), 1);
        assert_eq!(c.extra[0].0, "Remote-Party-ID");
        assert_eq!(c.extra[0].1, "<sip:+15550100@pbx.example.com>;party=calling;screen=yes;privacy=off");
        let withheld =
            trunk(vec![CallerIdHeader::From, CallerIdHeader::Pai]).caller_headers("+15550100", true, Some("Alice"));
        assert_eq!(withheld.from, "\"Anonymous\" <sip:anonymous@anonymous.invalid>");
        assert_eq!(
            withheld.extra,
            vec![
                ("P-Asserted-Identity".to_owned(), "<sip:+15550100@pbx.example.com>".to_owned()),
                ("Privacy".to_owned(), "id".to_owned())
            ],
            "the PBX still learns who calls; the callee does not"
        );
        assert_eq!(t.uri("+15550001"), "sip:+15550001@pbx.example.com:5080");
        assert!(!format!("{t:?}").contains("hunter2"), "the secret never shows in Debug");
    }
}
