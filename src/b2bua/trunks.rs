//! Trunk identification (by source address) and routing (dialled number to
//! portal users), built once from the configuration.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use ipnet::IpNet;

use crate::admission::PortalId;
use crate::config::{LoadedTrunk, NumberSource, RingStrategy};
use crate::sip::message::{Request, Uri};

/// One route of a trunk.
#[derive(Debug)]
pub struct Route {
    /// The dialled number it matches, or `*`.
    pub number: String,
    /// Users to ring, in order.
    pub users: Vec<String>,
    /// How they are rung.
    pub strategy: RingStrategy,
    /// Ringing time (per user for sequential strategies), seconds.
    pub ring_timeout_s: u32,
    /// Rotation for `evenly`.
    next: AtomicUsize,
}

impl Route {
    /// The users in the order this call tries them: as written, or for
    /// `evenly` rotated by one on every call so calls spread across users.
    pub fn users_for_call(&self) -> Vec<String> {
        match self.strategy {
            RingStrategy::Evenly if !self.users.is_empty() => {
                let start = self.next.fetch_add(1, Ordering::Relaxed) % self.users.len();
                self.users[start..].iter().chain(&self.users[..start]).cloned().collect()
            }
            _ => self.users.clone(),
        }
    }
}

/// A configured trunk.
#[derive(Debug)]
pub struct Trunk {
    /// Name (call records, logs).
    pub name: String,
    /// The portal its calls belong to.
    pub portal: PortalId,
    /// Networks the PBX sends from.
    pub sources: Vec<IpNet>,
    /// Routes; exact numbers are tried before `*`.
    pub routes: Vec<Route>,
    /// Where the dialled number is read, in order.
    pub number_from: Vec<NumberSource>,
    /// Cloud PBX: the user part of our registered Contact (an INVITE to it
    /// is this trunk's, from wherever it comes).
    pub contact_user: Option<String>,
}

impl Trunk {
    /// The route for `number`: an exact match, else the `*` route.
    pub fn route(&self, number: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.number == number).or_else(|| self.routes.iter().find(|r| r.number == "*"))
    }
}

/// All trunks, looked up by source address.
#[derive(Debug, Default)]
pub struct TrunkTable {
    trunks: Vec<std::sync::Arc<Trunk>>,
    /// Trunks that take outbound calls, by priority.
    outbound: Vec<std::sync::Arc<super::outbound::OutboundTrunk>>,
}

impl TrunkTable {
    /// Builds the table from the loaded configuration (already validated:
    /// names unique, sources not overlapping).
    pub fn new(loaded: &[LoadedTrunk]) -> Self {
        let trunks = loaded
            .iter()
            .map(|lt| {
                std::sync::Arc::new(Trunk {
                    name: lt.trunk.name.get_ref().clone(),
                    portal: PortalId::new(lt.trunk.portal.get_ref().clone()),
                    sources: lt.sources.iter().map(|s| s.0).collect(),
                    number_from: lt.trunk.number_from.clone(),
                    contact_user: lt
                        .outbound
                        .as_ref()
                        .and_then(|o| o.registration.as_ref())
                        .map(|r| r.contact_user.clone()),
                    routes: lt
                        .trunk
                        .route
                        .iter()
                        .map(|r| Route {
                            number: r.number.get_ref().clone(),
                            users: r.users.iter().map(|u| u.get_ref().clone()).collect(),
                            strategy: r.strategy,
                            ring_timeout_s: r.ring_timeout_s,
                            next: AtomicUsize::new(0),
                        })
                        .collect(),
                })
            })
            .collect();
        let mut outbound: Vec<_> =
            loaded.iter().filter_map(super::outbound::OutboundTrunk::from_loaded).map(std::sync::Arc::new).collect();
        // Stable: equal priorities keep the configuration's order.
        outbound.sort_by_key(|t| t.priority);
        Self { trunks, outbound }
    }

    /// The trunks a call of `portal` goes out through, in priority order:
    /// the portal's own and the shared (`portal = "*"`) ones.
    pub fn outbound_for(&self, portal: &PortalId) -> Vec<std::sync::Arc<super::outbound::OutboundTrunk>> {
        self.outbound.iter().filter(|t| &t.portal == portal || t.portal.as_str() == "*").cloned().collect()
    }

    /// The trunk whose sources contain `ip` (IPv4-mapped IPv6 addresses are
    /// matched as IPv4).
    pub fn identify(&self, ip: IpAddr) -> Option<&std::sync::Arc<Trunk>> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.trunks.iter().find(|t| t.sources.iter().any(|n| n.contains(&ip)))
    }

    /// Gives the outbound trunks whose file names no credentials those
    /// stored in the database ((trunk, username, password) rows); returns
    /// the names of the trunks that took them. Called once, at start.
    pub fn use_stored_credentials(&mut self, stored: &[(String, String, String)]) -> Vec<String> {
        let mut taken = Vec::new();
        for t in &mut self.outbound {
            let Some((_, username, password)) = stored.iter().find(|(n, _, _)| *n == t.name) else { continue };
            if t.credentials.is_some() {
                continue;
            }
            if let Some(t) = std::sync::Arc::get_mut(t) {
                t.credentials =
                    Some(super::outbound::Credentials { username: username.clone(), password: password.clone() });
                taken.push(t.name.clone());
            }
        }
        taken
    }

    /// The cloud-PBX trunk whose registered Contact has user part `user`.
    pub fn by_contact_user(&self, user: &str) -> Option<&std::sync::Arc<Trunk>> {
        self.trunks.iter().find(|t| t.contact_user.as_deref() == Some(user))
    }

    /// Every outbound trunk, by priority.
    pub fn outbound(&self) -> &[std::sync::Arc<super::outbound::OutboundTrunk>] {
        &self.outbound
    }

    /// Number of trunks.
    pub fn len(&self) -> usize {
        self.trunks.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.trunks.is_empty()
    }
}

/// The number a PBX dialled, and where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialledNumber {
    /// Digits (with a leading `+` when given), `%XX` decoded.
    pub number: String,
}

/// The dialled number, read from the places `from` names in order (the
/// first that has a number wins); `%2B` is decoded once to `+`.
pub fn dialled_number(req: &Request, from: &[NumberSource]) -> Option<DialledNumber> {
    fn from_uri(uri: &Uri) -> Option<String> {
        match uri {
            Uri::Sip(s) => s.user_decoded().map(|u| String::from_utf8_lossy(&u).into_owned()),
            Uri::Tel(t) => Some(t.number().to_owned()),
            _ => None,
        }
        .map(|n| n.split(';').next().unwrap_or("").to_owned())
        .filter(|n| !n.is_empty())
    }
    from.iter()
        .find_map(|src| match src {
            NumberSource::RequestUri => from_uri(req.uri()),
            NumberSource::To => req.headers().to().ok().and_then(|to| from_uri(to.uri())),
            NumberSource::Diversion => {
                req.headers().diversions().ok().and_then(|d| d.first().and_then(|n| from_uri(n.uri())))
            }
        })
        .map(|number| DialledNumber { number })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Overrides, load};
    use crate::sip::message::{Message, parse};

    fn table(toml: &str) -> TrunkTable {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t.toml");
        std::fs::write(&p, toml).expect("write");
        let l = load(&p, &Overrides::default()).expect("valid config");
        TrunkTable::new(&l.trunks)
    }

    const CFG: &str = "[[trunk]]\nname = \"a\"\nportal = \"acme\"\nsources = [\"192.0.2.0/24\"]\n\
        [[trunk.route]]\nnumber = \"+15550001\"\nusers = [\"alice\", \"bob\"]\n\
        [[trunk.route]]\nnumber = \"*\"\nusers = [\"x\", \"y\", \"z\"]\nstrategy = \"evenly\"\n\
        [[trunk]]\nname = \"b\"\nportal = \"globex\"\nsources = [\"2001:db8::/32\", \"198.51.100.7\"]\n";

    #[test]
    fn identifies_by_source_network() {
        let t = table(CFG);
        assert_eq!(t.identify("192.0.2.77".parse().expect("ip")).map(|t| t.name.as_str()), Some("a"));
        assert_eq!(t.identify("198.51.100.7".parse().expect("ip")).map(|t| t.name.as_str()), Some("b"));
        assert_eq!(t.identify("2001:db8::5".parse().expect("ip")).map(|t| t.name.as_str()), Some("b"));
        assert_eq!(t.identify("::ffff:192.0.2.1".parse().expect("ip")).map(|t| t.name.as_str()), Some("a"));
        assert!(t.identify("198.51.100.8".parse().expect("ip")).is_none());
    }

    #[test]
    fn exact_route_before_wildcard_and_evenly_rotates() {
        let t = table(CFG);
        let a = t.identify("192.0.2.1".parse().expect("ip")).expect("trunk");
        assert_eq!(a.route("+15550001").map(|r| r.users.clone()), Some(vec!["alice".into(), "bob".into()]));
        let any = a.route("+1999").expect("wildcard");
        assert_eq!(any.users_for_call(), ["x", "y", "z"]);
        assert_eq!(any.users_for_call(), ["y", "z", "x"]);
        assert_eq!(any.users_for_call(), ["z", "x", "y"]);
        assert_eq!(a.route("+15550001").expect("r").users_for_call(), ["alice", "bob"], "ring_all keeps order");
        let b = t.identify("198.51.100.7".parse().expect("ip")).expect("trunk");
        assert!(b.route("123").is_none(), "no route");
    }

    fn req(ruri: &str, to: &str) -> Request {
        let text = format!(
            "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: {to}\r\n\
             Call-ID: c\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes()).expect("parse") {
            Message::Request(r) => r,
            Message::Response(_) => panic!("request"),
        }
    }

    const DEFAULT: [NumberSource; 2] = [NumberSource::RequestUri, NumberSource::To];

    #[test]
    fn dialled_number_from_request_uri_then_to() {
        let n = |r: &Request| dialled_number(r, &DEFAULT).map(|d| d.number);
        assert_eq!(n(&req("sip:%2B15550001@gw;user=phone", "<sip:x@y>")), Some("+15550001".into()));
        assert_eq!(n(&req("sip:gw.example.com", "<sip:+15550002@y>")), Some("+15550002".into()));
        assert_eq!(n(&req("tel:+15550003", "<sip:x@y>")), Some("+15550003".into()));
        assert_eq!(n(&req("sip:gw.example.com", "<sip:y>")), None);
    }

    #[test]
    fn dialled_number_from_diversion_when_configured_first() {
        let text = "INVITE sip:+15559999@gw SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\n\
                    To: <sip:+15559999@gw>\r\nDiversion: <sip:+15550001@pbx>;reason=unconditional\r\nCall-ID: c\r\n\
                    CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
        let Ok(Message::Request(r)) = parse(text.as_bytes()) else { panic!("request") };
        let order = [NumberSource::Diversion, NumberSource::RequestUri];
        assert_eq!(dialled_number(&r, &order).map(|d| d.number), Some("+15550001".into()));
        assert_eq!(dialled_number(&r, &DEFAULT).map(|d| d.number), Some("+15559999".into()));
        let no_div = req("sip:+15550002@gw", "<sip:x@y>");
        assert_eq!(dialled_number(&no_div, &order).map(|d| d.number), Some("+15550002".into()), "falls through");
    }
}
