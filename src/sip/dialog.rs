//! Dialogs (RFC 3261 §12), sans-IO.
//!
//! A [`Dialog`] is one side's view of a peer-to-peer relationship: its id
//! (Call-ID, local tag, remote tag), the local and remote CSeq, the route
//! set and the remote target. It builds the requests that go inside it
//! (§12.2.1.1), checks and learns from the ones that arrive (§12.2.2, target
//! refresh), and learns from the responses to its own target refreshes.
//!
//! [`Uas2xx`] is the UAS core's retransmission of a 2xx to an INVITE until
//! its ACK (§13.3.1.4): T1 doubling up to T2, giving up after 64·T1. Like the
//! transaction machines it never reads the clock: `now` is an argument and
//! [`Uas2xx::poll_timeout`] says when to call back.
//!
//! Neither knows sockets or Via headers: a request built here has no Via;
//! the driver adds its own (address and branch are a transport matter).

use std::time::{Duration, Instant};

use crate::sip::message::{Contacts, HeaderName, Method, Request, RequestBuilder, Response, Uri};

/// Why a dialog could not be made or a request does not fit it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    /// A header needed to make the dialog is missing or unparsable: the
    /// message cannot start a dialog; answer 400 (request) or drop (response).
    #[error("{header} missing or unparsable")]
    Header {
        /// The header's name.
        header: &'static str,
    },
    /// The response carries no To tag: it creates no dialog (§12.1.2).
    #[error("no To tag")]
    NoRemoteTag,
    /// The peer sent a CSeq lower than (or equal to) one already seen
    /// (§12.2.2): answer 500.
    #[error("CSeq {got} out of order (last {last})")]
    CSeqOrder {
        /// The request's CSeq number.
        got: u32,
        /// The highest number seen before.
        last: u32,
    },
    /// The request's tags do not name this dialog: answer 481.
    #[error("request does not belong to this dialog")]
    NotThisDialog,
}

/// A dialog's identity (§12): Call-ID, local tag, remote tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    /// The Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag.
    pub remote_tag: String,
}

/// The dialog fields of a request from a peer, read once to be compared
/// with several dialogs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestIds<'a> {
    /// Call-ID.
    pub call_id: &'a str,
    /// From tag (the peer's; empty when absent).
    pub from_tag: &'a str,
    /// To tag (ours).
    pub to_tag: &'a str,
}

impl<'a> RequestIds<'a> {
    /// The fields of `req`, or `None` when it has no To tag (then it is
    /// in no dialog) or no usable Call-ID.
    pub fn of(req: &'a Request) -> Option<RequestIds<'a>> {
        let h = req.headers();
        Some(RequestIds {
            call_id: h.call_id().ok()?,
            to_tag: h.to_tag().ok()??,
            from_tag: h.from_tag().ok().flatten().unwrap_or(""),
        })
    }
}

/// Early (made by a 1xx) or confirmed (by a 2xx, §12.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// Made by a provisional response with a To tag.
    Early,
    /// Made or confirmed by a 2xx.
    Confirmed,
}

/// One dialog, from our side.
#[derive(Debug, Clone)]
pub struct Dialog {
    id: DialogId,
    state: DialogState,
    /// Our URI with our tag: the From of our requests.
    local: String,
    /// The peer's URI with its tag: the To of our requests.
    remote: String,
    local_seq: u32,
    remote_seq: Option<u32>,
    remote_target: Uri,
    /// Route set, in the order our requests carry it.
    route_set: Vec<String>,
}

fn header<'a>(
    h: &'a crate::sip::message::Headers,
    name: &HeaderName,
    label: &'static str,
) -> Result<&'a str, DialogError> {
    h.get(name).and_then(|v| v.value_str()).ok_or(DialogError::Header { header: label })
}

fn first_contact(h: &crate::sip::message::Headers) -> Option<Uri> {
    match h.contacts().ok()? {
        Contacts::List(l) => l.first().map(|n| n.uri().clone()),
        Contacts::Star => None,
    }
}

impl Dialog {
    /// The UAS side (§12.1.1): made from the INVITE we answer with a 1xx or
    /// 2xx carrying `local_tag`. The route set is the INVITE's
    /// Record-Route in order; the remote target its Contact (or, when it
    /// has none, what `fallback_target` makes).
    pub fn uas(
        invite: &Request,
        local_tag: &str,
        fallback_target: impl FnOnce() -> Uri,
    ) -> Result<Dialog, DialogError> {
        let h = invite.headers();
        let call_id = h.call_id().map_err(|_| DialogError::Header { header: "Call-ID" })?.to_owned();
        // The tag alone: the INVITE was validated on arrival, URI included.
        let remote_tag = h.from_tag().map_err(|_| DialogError::Header { header: "From" })?.unwrap_or("").to_owned();
        let cseq = h.cseq().map_err(|_| DialogError::Header { header: "CSeq" })?.seq;
        let to_raw = header(h, &HeaderName::To, "To")?;
        let local =
            if h.to_tag().ok().flatten().is_some() { to_raw.to_owned() } else { [to_raw, ";tag=", local_tag].concat() };
        let route_set = h.record_routes().map(|rr| rr.iter().map(ToString::to_string).collect()).unwrap_or_default();
        Ok(Dialog {
            id: DialogId { call_id, local_tag: local_tag.to_owned(), remote_tag },
            state: DialogState::Early,
            local,
            remote: header(h, &HeaderName::From, "From")?.to_owned(),
            local_seq: 0,
            remote_seq: Some(cseq),
            remote_target: first_contact(h).unwrap_or_else(fallback_target),
            route_set,
        })
    }

    /// The UAC side (§12.1.2): made from the INVITE we sent and a 1xx or
    /// 2xx with a To tag. The route set is the response's Record-Route in
    /// reverse; the remote target its Contact (or the INVITE's
    /// Request-URI when it has none).
    pub fn uac(invite: &Request, resp: &Response) -> Result<Dialog, DialogError> {
        let h = invite.headers();
        let rh = resp.headers();
        // The tags alone: the response was validated on arrival (URIs
        // included) and the INVITE is ours.
        let remote_tag =
            rh.to_tag().map_err(|_| DialogError::Header { header: "To" })?.ok_or(DialogError::NoRemoteTag)?.to_owned();
        let local_tag = h.from_tag().map_err(|_| DialogError::Header { header: "From" })?.unwrap_or("").to_owned();
        let call_id = h.call_id().map_err(|_| DialogError::Header { header: "Call-ID" })?.to_owned();
        let local_seq = h.cseq().map_err(|_| DialogError::Header { header: "CSeq" })?.seq;
        let route_set =
            rh.record_routes().map(|rr| rr.iter().rev().map(ToString::to_string).collect()).unwrap_or_default();
        let state = if (200..300).contains(&resp.status()) { DialogState::Confirmed } else { DialogState::Early };
        Ok(Dialog {
            id: DialogId { call_id, local_tag, remote_tag },
            state,
            local: header(h, &HeaderName::From, "From")?.to_owned(),
            remote: header(rh, &HeaderName::To, "To")?.to_owned(),
            local_seq,
            remote_seq: None,
            remote_target: first_contact(rh).unwrap_or_else(|| invite.uri().clone()),
            route_set,
        })
    }

    /// The dialog's id.
    pub fn id(&self) -> &DialogId {
        &self.id
    }

    /// Early or confirmed.
    pub fn state(&self) -> DialogState {
        self.state
    }

    /// A 2xx confirmed the dialog (UAS: we sent it; UAC: it arrived). On
    /// the UAC side the 2xx's Contact and Record-Route replace what the
    /// 1xx said (§12.1.2: the route set is fixed by the 2xx).
    pub fn confirm(&mut self, resp: Option<&Response>) {
        if let Some(resp) = resp
            && self.state == DialogState::Early
        {
            let rh = resp.headers();
            if let Some(t) = first_contact(rh) {
                self.remote_target = t;
            }
            if let Ok(rr) = rh.record_routes() {
                self.route_set = rr.iter().rev().map(ToString::to_string).collect();
            }
        }
        self.state = DialogState::Confirmed;
    }

    /// The remote target (the Request-URI of our next request).
    pub fn remote_target(&self) -> &Uri {
        &self.remote_target
    }

    /// The route set, in the order our requests carry it.
    pub fn route_set(&self) -> &[String] {
        &self.route_set
    }

    /// Our last CSeq number.
    pub fn local_seq(&self) -> u32 {
        self.local_seq
    }

    /// Starts a request in the dialog (§12.2.1.1): Request-URI and Route
    /// from the remote target and route set (strict routing when the first
    /// route has no `lr`), From, To, Call-ID, and the next local CSeq (ACK
    /// and CANCEL do not take a number of their own: use [`Self::ack`]).
    /// No Via: the driver adds it.
    pub fn request(&mut self, method: Method) -> RequestBuilder {
        self.local_seq = self.local_seq.wrapping_add(1).max(1);
        self.build(method, self.local_seq)
    }

    /// The ACK of a 2xx to our INVITE with CSeq number `invite_seq`
    /// (§13.2.2.4): the dialog's fields, CSeq number of the INVITE.
    pub fn ack(&self, invite_seq: u32) -> RequestBuilder {
        self.build(Method::Ack, invite_seq)
    }

    fn build(&self, method: Method, seq: u32) -> RequestBuilder {
        let first_strict = self
            .route_set
            .first()
            .and_then(|r| {
                crate::sip::message::typed::NameAddr::parse(&bytes::Bytes::from(r.clone()))
                    .ok()
                    .map(|n| n.uri().clone())
            })
            .filter(|u| u.as_sip().is_some_and(|s| !s.lr()));
        let (uri, routes): (Uri, Vec<String>) = match first_strict {
            // §12.2.1.1 strict routing: the first route is the Request-URI,
            // the remote target goes last in Route.
            Some(u) => {
                let mut rest: Vec<String> = self.route_set[1..].to_vec();
                rest.push(format!("<{}>", self.remote_target.as_str()));
                (u, rest)
            }
            None => (self.remote_target.clone(), self.route_set.clone()),
        };
        let mut b = Request::builder(method.clone(), uri)
            .header(HeaderName::MaxForwards, "70")
            .header(HeaderName::From, &self.local)
            .header(HeaderName::To, &self.remote)
            .header(HeaderName::CallId, &self.id.call_id)
            .header(HeaderName::CSeq, crate::sip::text::cseq(seq, method.as_str()));
        for r in routes {
            b = b.header(HeaderName::Route, r);
        }
        b
    }

    /// Whether `req` (from the peer) names this dialog: its Call-ID, its
    /// To tag ours, its From tag the peer's.
    pub fn matches_request(&self, req: &Request) -> bool {
        RequestIds::of(req).is_some_and(|ids| self.is_named_by(&ids))
    }

    /// Whether `ids` (read once from a request) name this dialog.
    pub fn is_named_by(&self, ids: &RequestIds<'_>) -> bool {
        ids.call_id == self.id.call_id && ids.to_tag == self.id.local_tag && ids.from_tag == self.id.remote_tag
    }

    /// A request from the peer inside the dialog (§12.2.2): it must name
    /// the dialog and its CSeq must be higher than the last one (ACK and
    /// CANCEL repeat their INVITE's number and are not checked); a target
    /// refresh (re-INVITE, UPDATE) with a Contact moves the remote target.
    pub fn handle_request(&mut self, req: &Request) -> Result<(), DialogError> {
        if !self.matches_request(req) {
            return Err(DialogError::NotThisDialog);
        }
        self.accept_request(req)
    }

    /// [`Self::handle_request`] for a request the caller already matched
    /// to this dialog ([`Self::is_named_by`]): CSeq order and target refresh.
    pub fn accept_request(&mut self, req: &Request) -> Result<(), DialogError> {
        let seq = req.headers().cseq().map_err(|_| DialogError::Header { header: "CSeq" })?.seq;
        if !matches!(req.method(), Method::Ack | Method::Cancel) {
            if let Some(last) = self.remote_seq
                && seq <= last
            {
                return Err(DialogError::CSeqOrder { got: seq, last });
            }
            self.remote_seq = Some(seq);
        }
        if matches!(req.method(), Method::Invite | Method::Update)
            && let Some(t) = first_contact(req.headers())
        {
            self.remote_target = t;
        }
        Ok(())
    }

    /// A 2xx to our re-INVITE or UPDATE refreshes the remote target.
    pub fn handle_refresh_response(&mut self, resp: &Response) {
        if (200..300).contains(&resp.status())
            && let Some(t) = first_contact(resp.headers())
        {
            self.remote_target = t;
        }
    }
}

/// What [`Uas2xx::handle_timeout`] asks of its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uas2xxEvent {
    /// Send the 2xx again.
    Retransmit,
    /// 64·T1 went by without an ACK: the dialog must end (§13.3.1.4: BYE).
    NoAck,
}

/// The UAS core's 2xx retransmission until the ACK (§13.3.1.4).
#[derive(Debug, Clone)]
pub struct Uas2xx {
    /// CSeq number of the INVITE the 2xx answers (its ACK repeats it).
    seq: u32,
    interval: Duration,
    t2: Duration,
    next: Instant,
    give_up: Instant,
}

impl Uas2xx {
    /// Starts after the 2xx was first sent at `now`.
    pub fn new(now: Instant, seq: u32, t1: Duration, t2: Duration) -> Uas2xx {
        Uas2xx { seq, interval: t1, t2, next: now + t1, give_up: now + t1 * 64 }
    }

    /// The INVITE's CSeq number.
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// When to call [`Self::handle_timeout`].
    pub fn poll_timeout(&self) -> Instant {
        self.next.min(self.give_up)
    }

    /// Time passed: retransmit (interval doubled up to T2), give up, or
    /// nothing yet.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Uas2xxEvent> {
        if now >= self.give_up {
            return Some(Uas2xxEvent::NoAck);
        }
        if now < self.next {
            return None;
        }
        self.interval = (self.interval * 2).min(self.t2);
        self.next = now + self.interval;
        Some(Uas2xxEvent::Retransmit)
    }

    /// Whether `ack_seq` (an ACK's CSeq number) acknowledges this 2xx.
    pub fn is_acked_by(&self, ack_seq: u32) -> bool {
        ack_seq == self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::Message;

    fn parse(s: &str) -> Message {
        crate::sip::message::parse(s.replace('\n', "\r\n").as_bytes()).expect("valid message")
    }

    fn req(s: &str) -> Request {
        match parse(s) {
            Message::Request(r) => r,
            Message::Response(_) => panic!("not a request"),
        }
    }

    fn resp(s: &str) -> Response {
        match parse(s) {
            Message::Response(r) => r,
            Message::Request(_) => panic!("not a response"),
        }
    }

    const INVITE: &str = "INVITE sip:bob@b.example SIP/2.0\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\n\
Max-Forwards: 70\n\
From: \"Al\" <sip:alice@a.example>;tag=at\n\
To: <sip:bob@b.example>\n\
Call-ID: c1@a\n\
CSeq: 10 INVITE\n\
Contact: <sip:alice@192.0.2.1:5060>\n\
Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\n\
Content-Length: 0\n\n";

    fn ok(contact: &str, rr: &str) -> Response {
        resp(&format!(
            "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\nFrom: \"Al\" <sip:alice@a.example>;tag=at\n\
To: <sip:bob@b.example>;tag=bt\nCall-ID: c1@a\nCSeq: 10 INVITE\nContact: <{contact}>\n{rr}Content-Length: 0\n\n"
        ))
    }

    #[test]
    fn uas_dialog_takes_route_set_in_order_and_answers_from_the_to() {
        let inv = req(INVITE);
        let mut d = Dialog::uas(&inv, "ours", || Uri::parse("sip:192.0.2.1").unwrap()).unwrap();
        assert_eq!(d.id(), &DialogId { call_id: "c1@a".into(), local_tag: "ours".into(), remote_tag: "at".into() });
        assert_eq!(d.route_set(), ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]);
        let bye = d.request(Method::Bye).build().unwrap();
        let h = bye.headers();
        assert_eq!(bye.uri().as_str(), "sip:alice@192.0.2.1:5060");
        assert_eq!(h.get(&HeaderName::From).unwrap().value_str(), Some("<sip:bob@b.example>;tag=ours"));
        assert_eq!(h.get(&HeaderName::To).unwrap().value_str(), Some("\"Al\" <sip:alice@a.example>;tag=at"));
        assert_eq!(h.cseq().unwrap().seq, 1);
        let routes: Vec<_> = h.get_all(&HeaderName::Route).filter_map(|r| r.value_str()).collect();
        assert_eq!(routes, ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]);
    }

    #[test]
    fn uac_dialog_reverses_the_route_set_and_targets_the_contact() {
        let inv = req(INVITE);
        let r = ok("sip:bob@198.51.100.7:5062", "Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\n");
        let mut d = Dialog::uac(&inv, &r).unwrap();
        assert_eq!(d.state(), DialogState::Confirmed);
        assert_eq!(d.id().remote_tag, "bt");
        assert_eq!(d.route_set(), ["<sip:p2.example;lr>", "<sip:p1.example;lr>"]);
        let ack = d.ack(10).build().unwrap();
        assert_eq!(ack.headers().cseq().unwrap().seq, 10);
        assert_eq!(ack.uri().as_str(), "sip:bob@198.51.100.7:5062");
        let bye = d.request(Method::Bye).build().unwrap();
        assert_eq!(bye.headers().cseq().unwrap().seq, 11);
        assert_eq!(bye.headers().get(&HeaderName::To).unwrap().value_str(), Some("<sip:bob@b.example>;tag=bt"));
    }

    #[test]
    fn strict_route_goes_to_the_request_uri() {
        let inv = req(INVITE);
        let r = ok("sip:bob@198.51.100.7", "Record-Route: <sip:strict.example>\n");
        let mut d = Dialog::uac(&inv, &r).unwrap();
        let bye = d.request(Method::Bye).build().unwrap();
        assert_eq!(bye.uri().as_str(), "sip:strict.example");
        let routes: Vec<_> = bye.headers().get_all(&HeaderName::Route).filter_map(|r| r.value_str()).collect();
        assert_eq!(routes, ["<sip:bob@198.51.100.7>"]);
    }

    #[test]
    fn provisional_without_tag_makes_no_dialog() {
        let inv = req(INVITE);
        let r = resp(
            "SIP/2.0 180 Ringing\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\nFrom: <sip:alice@a.example>;tag=at\n\
To: <sip:bob@b.example>\nCall-ID: c1@a\nCSeq: 10 INVITE\nContent-Length: 0\n\n",
        );
        assert_eq!(Dialog::uac(&inv, &r).unwrap_err(), DialogError::NoRemoteTag);
    }

    #[test]
    fn early_dialog_confirmed_by_2xx_takes_its_target() {
        let inv = req(INVITE);
        let early = resp(
            "SIP/2.0 180 Ringing\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\nFrom: <sip:alice@a.example>;tag=at\n\
To: <sip:bob@b.example>;tag=bt\nCall-ID: c1@a\nCSeq: 10 INVITE\nContact: <sip:early@198.51.100.7>\nContent-Length: 0\n\n",
        );
        let mut d = Dialog::uac(&inv, &early).unwrap();
        assert_eq!(d.state(), DialogState::Early);
        d.confirm(Some(&ok("sip:final@198.51.100.8", "")));
        assert_eq!(d.state(), DialogState::Confirmed);
        assert_eq!(d.remote_target().as_str(), "sip:final@198.51.100.8");
    }

    fn in_dialog(method: &str, seq: u32, contact: &str) -> Request {
        req(&format!(
            "{method} sip:bob@b.example SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{seq}\nMax-Forwards: 70\n\
From: <sip:alice@a.example>;tag=at\nTo: <sip:bob@b.example>;tag=ours\nCall-ID: c1@a\nCSeq: {seq} {method}\n{contact}Content-Length: 0\n\n"
        ))
    }

    #[test]
    fn peer_requests_are_checked_and_refresh_the_target() {
        let inv = req(INVITE);
        let mut d = Dialog::uas(&inv, "ours", || Uri::parse("sip:192.0.2.1").unwrap()).unwrap();
        // Lower or equal CSeq: out of order (§12.2.2 says 500).
        assert_eq!(d.handle_request(&in_dialog("INFO", 10, "")), Err(DialogError::CSeqOrder { got: 10, last: 10 }));
        // A re-INVITE with a new Contact moves the target.
        d.handle_request(&in_dialog("INVITE", 11, "Contact: <sip:alice@192.0.2.99:5070>\n")).unwrap();
        assert_eq!(d.remote_target().as_str(), "sip:alice@192.0.2.99:5070");
        // INFO's Contact is no target refresh.
        d.handle_request(&in_dialog("INFO", 12, "Contact: <sip:other@192.0.2.5>\n")).unwrap();
        assert_eq!(d.remote_target().as_str(), "sip:alice@192.0.2.99:5070");
        // ACK repeats the INVITE's number: not an ordering error.
        d.handle_request(&in_dialog("ACK", 11, "")).unwrap();
        // Another dialog's request.
        let mut other = in_dialog("BYE", 13, "");
        other.headers_mut().set(HeaderName::To, "<sip:bob@b.example>;tag=theirs").unwrap();
        assert_eq!(d.handle_request(&other), Err(DialogError::NotThisDialog));
    }

    #[test]
    fn uas_2xx_retransmits_at_t1_doubling_to_t2_then_gives_up_at_64_t1() {
        let t0 = crate::clock::instant();
        let t1 = Duration::from_millis(500);
        let t2 = Duration::from_secs(4);
        let mut r = Uas2xx::new(t0, 1, t1, t2);
        let mut sent = Vec::new();
        let now = loop {
            let now = r.poll_timeout();
            match r.handle_timeout(now) {
                Some(Uas2xxEvent::Retransmit) => sent.push((now - t0).as_millis()),
                Some(Uas2xxEvent::NoAck) => break now,
                None => panic!("woken for nothing at {:?}", now - t0),
            }
        };
        assert_eq!(sent, [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]);
        assert_eq!((now - t0).as_millis(), 32_000);
        assert!(r.is_acked_by(1) && !r.is_acked_by(2));
    }
}
