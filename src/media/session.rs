//! [`RelayMedia`]: the call's [`MediaSession`] when media is anchored. Each
//! leg gets a port pair of its own address family; each SDP that crosses
//! the call is pointed at the receiving leg's pair (codecs the relay cannot
//! carry taken out of offers), and what each leg's SDP announced becomes
//! its side's settings on the relay thread (where to send, RTCP and mux,
//! hold, payload-type numbering).
//!
//! Side A of the stream is leg 0 (the trunk); side B is the leg that last
//! answered or offered from the far side (the fork that won, or one giving
//! early media). Forks that lose have their pairs closed by the call.
//!
//! A browser leg has no pair: its offers and answers are its WebRTC
//! session's (`media/webrtc.rs`, on the thread of the shared port), and
//! what it writes crosses to the PBX as plain `RTP/AVP` description.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rtc_sdp::SessionDescription;

use super::engine::{BrowserOp, EventSink, Family, Figures, LegFigures, MediaEngine, SideUpdate, StreamHandle};
use super::ports::PortPair;
use super::relay::Side;
use super::sdp::{self, StreamInfo};
use super::webrtc::{DEFAULT_EVENT_PT, MediaDirection, Voice};
use crate::b2bua::{Body, LegId, MediaError, MediaSession};

#[derive(Debug)]
struct LegMedia {
    /// Our address in SDP toward the leg.
    sdp_ip: IpAddr,
    family: Family,
    pair: Option<PortPair>,
    /// What the leg's own latest SDP says.
    theirs: Option<StreamInfo>,
    /// The SDP we last gave it, and its stream info.
    ours: Option<(Body, StreamInfo)>,
    /// Our `o=` session id toward it (ours, not the other leg's: neither
    /// peer learns anything of the other) and the next version.
    session_id: u64,
    version: u64,
    /// A browser (WebRTC) leg.
    browser: bool,
    /// Browser: our answer to its offer, given once the other leg answered.
    browser_answer: Option<Body>,
    /// Browser calling out: its first offer, answered by its WebRTC
    /// session once the far end has chosen the codec.
    browser_offer: Option<String>,
}

/// Anchored media of one call.
pub struct RelayMedia {
    stream: StreamHandle,
    legs: HashMap<LegId, LegMedia>,
    /// The leg on side B.
    b: Option<LegId>,
    engine: Arc<MediaEngine>,
}

impl std::fmt::Debug for RelayMedia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayMedia").field("legs", &self.legs).field("b", &self.b).finish_non_exhaustive()
    }
}

/// The final or live figures of a call's media, per leg.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CallFigures {
    /// The trunk (PBX) leg.
    pub pbx: LegFigures,
    /// The portal user's leg.
    pub user: LegFigures,
}

impl RelayMedia {
    /// A call's media on `engine`; `events` hears its media timeout.
    /// `browsers`: a leg may be a browser (the stream goes to the thread
    /// of the shared port).
    pub fn new(engine: &Arc<MediaEngine>, events: EventSink, browsers: bool) -> RelayMedia {
        RelayMedia { stream: engine.open(events, browsers), legs: HashMap::new(), b: None, engine: engine.clone() }
    }

    fn is_browser(&self, leg: LegId) -> bool {
        self.legs.get(&leg).is_some_and(|l| l.browser)
    }

    /// The PBX's offer toward a browser: the browser's WebRTC session
    /// offers the G.711 codecs of the PBX's offer and events, in the PBX's
    /// direction and numbers.
    fn offer_to_browser(&mut self, from: LegId, to: LegId, offer: &Body) -> Result<Body, MediaError> {
        let desc = sdp::parse(offer)?;
        let info = sdp::stream_info(&desc).ok_or(MediaError::NoCommonCodec)?;
        let mut voices = Vec::new();
        for f in &info.formats {
            let v = if f.name.eq_ignore_ascii_case("PCMU") && f.pt == 0 {
                Voice::Pcmu
            } else if f.name.eq_ignore_ascii_case("PCMA") && f.pt == 8 {
                Voice::Pcma
            } else {
                continue;
            };
            if !voices.contains(&v) {
                voices.push(v);
            }
        }
        // No transcoding: a PBX that offers no G.711 cannot reach a browser.
        if voices.is_empty() {
            return Err(MediaError::NoCommonCodec);
        }
        let event_pt = info.formats.iter().find(|f| f.is_event() && f.rate == 8000).map_or(DEFAULT_EVENT_PT, |f| f.pt);
        let direction = match info.direction {
            sdp::Direction::SendRecv => MediaDirection::SendRecv,
            sdp::Direction::SendOnly => MediaDirection::SendOnly,
            sdp::Direction::RecvOnly => MediaDirection::RecvOnly,
            sdp::Direction::Inactive => MediaDirection::Inactive,
        };
        self.ensure_pair(from)?;
        let ip = self.legs.get(&to).map(|l| l.sdp_ip).ok_or_else(|| unusable("unknown leg"))?;
        let made = self.stream.browser(to.0, BrowserOp::Offer { voices, event_pt, direction, ip })?;
        let l = self.legs.get_mut(&to).ok_or_else(|| unusable("unknown leg"))?;
        let body = match made {
            Some(text) => sdp_body(text),
            // Nothing changed (a refresh): what it has stands.
            None => l.ours.as_ref().map(|(b, _)| b.clone()).ok_or_else(|| unusable("no offer for the browser"))?,
        };
        let ours = sdp::browser_stream_info(&sdp::parse(&body)?).ok_or(MediaError::NoCommonCodec)?;
        l.ours = Some((body.clone(), ours));
        if let Some(l) = self.legs.get_mut(&from) {
            l.theirs = Some(info);
        }
        self.push(from);
        self.push_session();
        Ok(body)
    }

    /// A browser's offer (its re-INVITE: hold, resume): its WebRTC session
    /// answers now (given once the other leg answered too), and the other
    /// leg gets it as plain RTP.
    fn offer_from_browser(&mut self, from: LegId, to: LegId, offer: &Body) -> Result<Body, MediaError> {
        let text = std::str::from_utf8(&offer.bytes).map_err(|_| unusable("SDP is not UTF-8"))?.to_owned();
        let first = self.legs.get(&from).is_some_and(|l| l.ours.is_none() && l.browser_answer.is_none());
        if first {
            // A browser calling out: the far end gets the browser's G.711
            // (no transcoding, so nothing else), and the browser its answer
            // once the far end has picked one (see `answer`).
            let mut desc = sdp::parse(offer)?;
            let info = sdp::browser_stream_info(&desc).ok_or(MediaError::NoCommonCodec)?;
            sdp::plain_from_webrtc(&mut desc);
            sdp::keep_relayable(&mut desc, &["PCMU", "PCMA", "telephone-event"])?;
            let body = self.anchored_for(to, desc)?;
            if let Some(l) = self.legs.get_mut(&from) {
                l.theirs = Some(info);
                l.browser_offer = Some(text);
            }
            self.push(from);
            self.push_session();
            return Ok(body);
        }
        let answer = self
            .stream
            .browser(from.0, BrowserOp::AcceptOffer { sdp: text, new: None })?
            .ok_or_else(|| unusable("no answer"))?;
        let mut desc = sdp::parse(offer)?;
        let info = sdp::browser_stream_info(&desc).ok_or(MediaError::NoCommonCodec)?;
        sdp::plain_from_webrtc(&mut desc);
        sdp::keep_relayable(&mut desc, sdp::RELAYABLE)?;
        let body = self.anchored_for(to, desc)?;
        if let Some(l) = self.legs.get_mut(&from) {
            l.theirs = Some(info);
            l.browser_answer = Some(sdp_body(answer));
        }
        self.connect(from);
        self.push(from);
        self.push_session();
        Ok(body)
    }

    /// The live figures (shared with the relay thread).
    pub fn figures_handle(&self) -> Arc<Figures> {
        self.stream.figures().clone()
    }

    /// The figures now, by role: the PBX's leg and the user's (an
    /// outbound call's first leg is the user's).
    pub fn figures(figures: &Figures, outbound: bool) -> CallFigures {
        let [a, b] = figures.legs();
        if outbound { CallFigures { pbx: b, user: a } } else { CallFigures { pbx: a, user: b } }
    }

    /// Ensures `leg` has a pair; PortsExhausted when none is free.
    fn ensure_pair(&mut self, leg: LegId) -> Result<PortPair, MediaError> {
        let l = self.legs.get(&leg).ok_or_else(|| MediaError::Unusable { detail: "unknown leg".into() })?;
        if let Some(p) = l.pair {
            return Ok(p);
        }
        let pair = self.stream.add_leg(leg.0, l.family)?;
        if let Some(l) = self.legs.get_mut(&leg) {
            l.pair = Some(pair);
        }
        Ok(pair)
    }

    /// `desc` (from the other leg) pointed at `to`'s pair.
    fn anchored_for(&mut self, to: LegId, mut desc: SessionDescription) -> Result<Body, MediaError> {
        let pair = self.ensure_pair(to)?;
        let l = self.legs.get_mut(&to).ok_or_else(|| MediaError::Unusable { detail: "unknown leg".into() })?;
        // Our own session id per leg; the version moves with every change.
        desc.origin.username = "trunkgate".into();
        desc.origin.session_id = l.session_id;
        desc.origin.session_version = l.version;
        l.version += 1;
        sdp::anchor(&mut desc, l.sdp_ip, &[pair]);
        let body = sdp::to_body(&desc);
        let info = sdp::stream_info(&desc).ok_or(MediaError::NoCommonCodec)?;
        l.ours = Some((body.clone(), info));
        Ok(body)
    }

    /// Pushes `leg`'s settings (if it is on a side) and the stream's.
    fn push(&mut self, leg: LegId) {
        let side = if leg == LegId::ORIGIN {
            Side::A
        } else if self.b == Some(leg) {
            Side::B
        } else {
            return;
        };
        let other = match side {
            Side::A => self.b,
            Side::B => Some(LegId::ORIGIN),
        };
        let Some(me) = self.legs.get(&leg) else { return };
        let Some(theirs) = me.theirs.as_ref() else { return };
        // Payload types the leg sends: numbered as its own SDP says (what
        // most stacks do), else as ours to it; renumbered as the other leg
        // receives them (its own SDP).
        let mut from: Vec<sdp::Format> = me.ours.as_ref().map(|(_, i)| i.formats.clone()).unwrap_or_default();
        from.extend(theirs.formats.iter().cloned());
        let to = other.and_then(|o| self.legs.get(&o)).and_then(|o| o.theirs.as_ref()).map(|i| i.formats.clone());
        let mut pt_map = sdp::payload_map(&from, to.as_deref().unwrap_or(&[]));
        let event = |f: &[sdp::Format]| f.iter().find(|f| f.is_event()).map(|f| (f.pt, f.rate));
        let mine = event(&theirs.formats);
        let events_in = [mine.map(|e| e.0), me.ours.as_ref().and_then(|(_, i)| event(&i.formats)).map(|e| e.0)];
        let events_out = mine.map(|e| e.0);
        // Events map to the other leg's events whatever their clock rates
        // (8 kHz against 48 kHz beside Opus): the relay re-times them.
        if let Some((other_pt, _)) = to.as_deref().and_then(event) {
            for pt in events_in.into_iter().flatten() {
                pt_map[usize::from(pt & 0x7f)] = other_pt;
            }
        }
        let rate = mine.map_or(8000, |e| e.1);
        let event_rates = (rate, rate);
        self.stream.update(
            leg.0,
            SideUpdate {
                rtp: theirs.rtp,
                rtcp: if theirs.rtcp_mux { theirs.rtp } else { theirs.rtcp },
                mux: theirs.rtcp_mux,
                receives: theirs.direction.receives() && theirs.rtp.is_some(),
                pt_map,
                events_in,
                events_out,
                event_rates,
            },
        );
    }

    /// The stream's clock, hold state and timeout arming, from both sides.
    fn push_session(&self) {
        let a = self.legs.get(&LegId::ORIGIN).and_then(|l| l.theirs.as_ref());
        let b = self.b.and_then(|b| self.legs.get(&b)).and_then(|l| l.theirs.as_ref());
        let clock = a.or(b).map_or(8000, StreamInfo::clock_rate);
        let held = a.is_some_and(StreamInfo::is_hold) || b.is_some_and(StreamInfo::is_hold);
        self.stream.session(clock, held, a.is_some() && b.is_some());
    }

    fn connect(&mut self, leg: LegId) {
        if leg != LegId::ORIGIN && self.b != Some(leg) {
            self.b = Some(leg);
            self.stream.connect(leg.0);
        }
    }
}

impl MediaSession for RelayMedia {
    fn add_leg(&mut self, leg: LegId, peer: SocketAddr, local: SocketAddr, browser: bool) {
        let family = Family::of(peer.ip());
        let s = self.engine.settings();
        let public: Option<IpAddr> = match family {
            Family::V4 => s.public_v4.map(IpAddr::from),
            Family::V6 => s.public_v6.map(IpAddr::from),
        };
        let bind: IpAddr = match family {
            Family::V4 => s.bind_v4.into(),
            Family::V6 => s.bind_v6.into(),
        };
        // The SDP address: the configured one, else our SIP address toward
        // the peer, else the bind address.
        let sdp_ip = public
            .or_else(|| (!local.ip().is_unspecified() && Family::of(local.ip()) == family).then(|| local.ip()))
            .unwrap_or(bind);
        let mut id = [0u8; 4];
        let _ = getrandom::fill(&mut id);
        let session_id = u64::from(u32::from_le_bytes(id));
        self.legs.insert(
            leg,
            LegMedia {
                sdp_ip,
                family,
                pair: None,
                theirs: None,
                ours: None,
                session_id,
                version: 1,
                browser,
                browser_answer: None,
                browser_offer: None,
            },
        );
    }

    fn offer(&mut self, from: LegId, to: LegId, offer: &Body) -> Result<Body, MediaError> {
        if self.is_browser(to) {
            return self.offer_to_browser(from, to, offer);
        }
        if self.is_browser(from) {
            return self.offer_from_browser(from, to, offer);
        }
        let mut desc = sdp::parse(offer)?;
        let info = sdp::stream_info(&desc).ok_or(MediaError::NoCommonCodec)?;
        sdp::keep_relayable(&mut desc, sdp::RELAYABLE)?;
        // Events are offered whatever the offerer said: a leg that takes
        // them sends its digits as RTP, which trunkgate turns into SIP INFO
        // toward a leg that does not.
        let pt = sdp::free_dynamic_pt(&desc);
        sdp::add_events(&mut desc, pt);
        // Both ends get their pair now: a full pool refuses the call before
        // anything rings.
        self.ensure_pair(from)?;
        let body = match self.anchored_for(to, desc) {
            Ok(b) => b,
            Err(e) => {
                if to != LegId::ORIGIN && self.b != Some(to) {
                    self.close_leg(to);
                }
                return Err(e);
            }
        };
        if let Some(l) = self.legs.get_mut(&from) {
            l.theirs = Some(info);
        }
        if from != LegId::ORIGIN {
            // An offer from the far side (its 2xx to our offerless INVITE,
            // or its re-INVITE): that leg is side B.
            self.connect(from);
        }
        self.push(from);
        self.push_session();
        Ok(body)
    }

    fn answer(&mut self, from: LegId, to: LegId, answer: &Body) -> Result<Body, MediaError> {
        if self.is_browser(to) {
            // The other leg answered the browser's offer: the browser gets
            // the answer its WebRTC session made.
            let info = sdp::stream_info(&sdp::parse(answer)?);
            if let Some(offer) = self.legs.get_mut(&to).and_then(|l| l.browser_offer.take()) {
                // The browser's first offer: its WebRTC session is made now,
                // with the codec the far end chose.
                let chosen = info.as_ref().and_then(|i| i.formats.iter().find(|f| !f.is_event()).cloned());
                let voice = match chosen {
                    Some(f) if f.name.eq_ignore_ascii_case("PCMU") => Voice::Pcmu,
                    Some(f) if f.name.eq_ignore_ascii_case("PCMA") => Voice::Pcma,
                    _ => return Err(MediaError::NoCommonCodec),
                };
                let l = self.legs.get(&to).ok_or_else(|| unusable("unknown leg"))?;
                let event_pt = l
                    .theirs
                    .as_ref()
                    .and_then(|t| t.formats.iter().find(|f| f.is_event() && f.rate == 8000))
                    .map_or(DEFAULT_EVENT_PT, |f| f.pt);
                let new = Some((vec![voice], event_pt, l.sdp_ip));
                let made = self.stream.browser(to.0, BrowserOp::AcceptOffer { sdp: offer, new })?;
                let l = self.legs.get_mut(&to).ok_or_else(|| unusable("unknown leg"))?;
                l.browser_answer = Some(sdp_body(made.ok_or_else(|| unusable("no answer"))?));
            }
            let l = self.legs.get_mut(&to).ok_or_else(|| unusable("unknown leg"))?;
            let body = l.browser_answer.take().ok_or_else(|| unusable("no answer for the browser"))?;
            let ours = sdp::browser_stream_info(&sdp::parse(&body)?).ok_or(MediaError::NoCommonCodec)?;
            l.ours = Some((body.clone(), ours));
            if let Some(l) = self.legs.get_mut(&from) {
                l.theirs = info;
            }
            // Side B is the leg that is not the origin: the browser fork of
            // an inbound call, the trunk of a browser's outbound call.
            self.connect(if to == LegId::ORIGIN { from } else { to });
            self.push(from);
            self.push(to);
            self.push_session();
            return Ok(body);
        }
        let mut desc = sdp::parse(answer)?;
        let info = if self.is_browser(from) {
            // The browser answered our offer: its WebRTC session takes it,
            // the other leg gets it as plain RTP.
            let text = std::str::from_utf8(&answer.bytes).map_err(|_| unusable("SDP is not UTF-8"))?.to_owned();
            self.stream.browser(from.0, BrowserOp::Answer(text))?;
            let info = sdp::browser_stream_info(&desc);
            sdp::plain_from_webrtc(&mut desc);
            info
        } else {
            self.ensure_pair(from)?;
            sdp::stream_info(&desc)
        };
        // Toward the offerer, in the offerer's numbers.
        if let Some(offer) = self.legs.get(&to).and_then(|l| l.theirs.as_ref()) {
            sdp::renumber_like(&mut desc, &offer.formats.clone());
            // Events in our answer exactly when the offerer offered them:
            // digits of a leg without them come as SIP INFO and go on as
            // RTP, and the other way round.
            match offer.formats.iter().find(|f| f.is_event()) {
                Some(ev) => sdp::add_events(&mut desc, ev.pt),
                None => {
                    let voice: Vec<&str> = sdp::RELAYABLE.iter().copied().filter(|c| *c != "telephone-event").collect();
                    let _ = sdp::keep_relayable(&mut desc, &voice);
                }
            }
        }
        let body = self.anchored_for(to, desc)?;
        if let Some(l) = self.legs.get_mut(&from) {
            l.theirs = info;
        }
        self.connect(if from == LegId::ORIGIN { to } else { from });
        self.push(from);
        self.push(to);
        self.push_session();
        Ok(body)
    }

    fn close_leg(&mut self, leg: LegId) {
        if let Some(l) = self.legs.get_mut(&leg)
            && (l.pair.take().is_some() || std::mem::take(&mut l.browser))
        {
            self.stream.close_leg(leg.0);
        }
        if self.b == Some(leg) {
            self.b = None;
        }
    }

    fn refreshed(&mut self, leg: LegId, answer: &Body) -> Result<(), MediaError> {
        let desc = sdp::parse(answer)?;
        if let Some(l) = self.legs.get_mut(&leg) {
            l.theirs = if l.browser { sdp::browser_stream_info(&desc) } else { sdp::stream_info(&desc) };
        }
        // A new offer/answer: the leg may latch again (a NAT rebinding).
        self.push(leg);
        self.push_session();
        Ok(())
    }

    fn send_dtmf(&mut self, to: LegId, digit: char, duration_ms: u32) -> bool {
        let takes_events = self.legs.get(&to).and_then(|l| l.theirs.as_ref()).is_some_and(StreamInfo::has_events);
        let on_a_side = to == LegId::ORIGIN || self.b == Some(to);
        if takes_events && on_a_side && crate::media::relay::event_code(digit).is_some() {
            self.stream.send_dtmf(to.0, digit, duration_ms);
            true
        } else {
            false
        }
    }

    fn local_description(&self, leg: LegId) -> Option<Body> {
        self.legs.get(&leg).and_then(|l| l.ours.as_ref()).map(|(b, _)| b.clone())
    }
}

fn unusable(detail: &str) -> MediaError {
    MediaError::Unusable { detail: detail.into() }
}

fn sdp_body(text: String) -> Body {
    Body { content_type: "application/sdp".into(), bytes: bytes::Bytes::from(text) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MediaSettings;

    fn body(s: &str) -> Body {
        Body { content_type: "application/sdp".into(), bytes: bytes::Bytes::from(s.replace('\n', "\r\n")) }
    }

    fn text(b: &Body) -> String {
        String::from_utf8(b.bytes.to_vec()).expect("utf-8").replace("\r\n", "\n")
    }

    /// A real engine on loopback with a range of its own.
    fn new_engine() -> (Arc<MediaEngine>, u16) {
        loop {
            let mut r = [0u8; 2];
            getrandom::fill(&mut r).expect("random");
            let min = (40_000 + u16::from_le_bytes(r) % 10_000) & !1;
            if (min..min + 8).all(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
                let settings = MediaSettings {
                    public_v4: Some("192.0.2.1".parse().expect("ip")),
                    bind_v4: "127.0.0.1".parse().expect("ip"),
                    port_min: min,
                    port_max: min + 7,
                    threads: 1,
                    ..MediaSettings::default()
                };
                return (MediaEngine::start(settings).expect("engine"), min);
            }
        }
    }

    const PBX: &str = "v=0\no=pbx 7 7 IN IP4 10.0.0.5\ns=call\nc=IN IP4 10.0.0.5\nt=0 0\n\
m=audio 4000 RTP/AVP 18 8 101\na=rtpmap:18 G729/8000\na=rtpmap:8 PCMA/8000\na=rtpmap:101 telephone-event/8000\n\
a=fmtp:101 0-16\na=sendrecv\n";
    const PHONE: &str = "v=0\no=phone 3 3 IN IP4 198.51.100.9\ns=-\nc=IN IP4 198.51.100.9\nt=0 0\n\
m=audio 5000 RTP/AVP 8 96\na=rtpmap:8 PCMA/8000\na=rtpmap:96 telephone-event/8000\na=sendrecv\n";

    #[test]
    fn each_leg_gets_our_address_its_own_pair_and_numbers_it_knows() {
        let (engine, min) = new_engine();
        let mut m = RelayMedia::new(&engine, Box::new(|_| {}), false);
        let sip = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        m.add_leg(LegId::ORIGIN, "10.0.0.5:5060".parse().expect("addr"), sip(5060), false);
        m.add_leg(LegId(1), "198.51.100.9:5060".parse().expect("addr"), sip(5060), false);
        let to_phone = text(&m.offer(LegId::ORIGIN, LegId(1), &body(PBX)).expect("offer"));
        // G.729 cannot be relayed; the PBX's leg took the first pair, the
        // phone's the second; nothing of the PBX's origin line is left.
        let phone_port = min + 2;
        assert!(to_phone.starts_with("v=0\no=trunkgate "), "{to_phone}");
        assert!(!to_phone.contains("10.0.0.5") && !to_phone.contains("o=pbx"), "{to_phone}");
        assert!(
            to_phone.contains(&format!("c=IN IP4 192.0.2.1\nt=0 0\nm=audio {phone_port} RTP/AVP 8 101\n")),
            "{to_phone}"
        );
        assert_eq!(engine.ports_in_use(), 2);
        let to_pbx = text(&m.answer(LegId(1), LegId::ORIGIN, &body(PHONE)).expect("answer"));
        // In the PBX's numbers (101, not the phone's 96), on the PBX's pair.
        assert!(to_pbx.contains(&format!("m=audio {min} RTP/AVP 8 101\n")), "{to_pbx}");
        assert!(to_pbx.contains("a=rtpmap:101 telephone-event/8000\n") && !to_pbx.contains(":96 "), "{to_pbx}");
        assert_eq!(m.local_description(LegId::ORIGIN).map(|b| text(&b)), Some(to_pbx.clone()));
        // A refresh answer from the phone changes nothing we gave the PBX.
        m.refreshed(LegId(1), &body(PHONE)).expect("refreshed");
        assert_eq!(m.local_description(LegId::ORIGIN).map(|b| text(&b)), Some(to_pbx));
        // A full pool: a third leg's offer fails and leaks nothing.
        let (full_engine, _) = new_engine();
        let mut a = RelayMedia::new(&full_engine, Box::new(|_| {}), false);
        let mut b = RelayMedia::new(&full_engine, Box::new(|_| {}), false);
        for s in [&mut a, &mut b] {
            for leg in [0, 1] {
                s.add_leg(LegId(leg), "10.0.0.5:5060".parse().expect("addr"), sip(5060), false);
            }
        }
        a.offer(LegId::ORIGIN, LegId(1), &body(PBX)).expect("two pairs");
        b.offer(LegId::ORIGIN, LegId(1), &body(PBX)).expect("four pairs: the range is full");
        let mut c = RelayMedia::new(&full_engine, Box::new(|_| {}), false);
        c.add_leg(LegId::ORIGIN, "10.0.0.5:5060".parse().expect("addr"), sip(5060), false);
        c.add_leg(LegId(1), "10.0.0.6:5060".parse().expect("addr"), sip(5060), false);
        assert_eq!(c.offer(LegId::ORIGIN, LegId(1), &body(PBX)), Err(MediaError::PortsExhausted));
        drop((a, b, c));
        crate::media::session::tests::wait_until(|| full_engine.ports_in_use() == 0);
    }

    /// Figures are read while a phone's packets stream through: every
    /// snapshot counts each packet in from the phone and out to the PBX
    /// together (a call record read at the BYE agrees with itself), and at
    /// the end every packet is counted once on each side.
    #[test]
    fn figures_count_each_packet_in_and_out_in_the_same_snapshot() {
        use std::net::UdpSocket;
        use std::sync::atomic::{AtomicBool, Ordering};
        let (engine, min) = new_engine();
        let pbx = UdpSocket::bind("127.0.0.1:0").expect("pbx socket");
        let phone = UdpSocket::bind("127.0.0.1:0").expect("phone socket");
        let sdp = |name: &str, port: u16| {
            format!(
                "v=0\no={name} 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\n\
                 m=audio {port} RTP/AVP 8\na=rtpmap:8 PCMA/8000\na=sendrecv\n"
            )
        };
        let port = |s: &UdpSocket| s.local_addr().expect("addr").port();
        let mut m = RelayMedia::new(&engine, Box::new(|_| {}), false);
        let sip = SocketAddr::from(([127, 0, 0, 1], 5060));
        m.add_leg(LegId::ORIGIN, sip, sip, false);
        m.add_leg(LegId(1), sip, sip, false);
        m.offer(LegId::ORIGIN, LegId(1), &body(&sdp("pbx", port(&pbx)))).expect("offer");
        m.answer(LegId(1), LegId::ORIGIN, &body(&sdp("phone", port(&phone)))).expect("answer");
        let figures = m.figures_handle();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (figures, stop) = (figures.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut reads, mut torn) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let [pbx, user] = figures.legs();
                    reads += 1;
                    if user.rx_packets != pbx.tx_packets && torn.len() < 5 {
                        torn.push((user.rx_packets, pbx.tx_packets));
                    }
                }
                (reads, torn)
            })
        };
        // The phone's leg is the second pair; bursts so that the relay
        // takes several packets per wake-up. At most 128 in flight: on a
        // loaded box (the whole suite running) the relay thread can lose
        // its CPU for milliseconds, and unpaced bursts then overflowed its
        // socket's buffer, so the last packets never came.
        const N: u16 = 4000;
        let to = SocketAddr::from(([127, 0, 0, 1], min + 2));
        let mut pkt = [0xd5u8; 172];
        for seq in 0..N {
            pkt[..12].copy_from_slice(&[0x80, 8, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
            pkt[2..4].copy_from_slice(&seq.to_be_bytes());
            pkt[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
            phone.send_to(&pkt, to).expect("send");
            if seq % 16 == 15 {
                std::thread::sleep(std::time::Duration::from_micros(200));
                for _ in 0..10_000 {
                    if figures.legs()[1].rx_packets + 128 > u64::from(seq) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_micros(500));
                }
            }
        }
        wait_until(|| figures.legs()[1].rx_packets == u64::from(N));
        stop.store(true, Ordering::Relaxed);
        let (reads, torn) = reader.join().expect("reader");
        assert_eq!(torn, [], "snapshots with a packet counted in and not out ({reads} reads)");
        assert!(reads > 1000, "the reader ran beside the relay: {reads} reads");
        let [to_pbx, from_phone] = figures.legs();
        assert_eq!((from_phone.rx_packets, to_pbx.tx_packets, from_phone.rx_bytes), (4000, 4000, 4000 * 172));
    }

    /// The relay thread closes and gives back asynchronously.
    pub(super) fn wait_until(ok: impl Fn() -> bool) {
        for _ in 0..200 {
            if ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("condition never held");
    }
}
