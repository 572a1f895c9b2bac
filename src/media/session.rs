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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rtc_sdp::SessionDescription;

use super::engine::{EventSink, Family, Figures, LegFigures, MediaEngine, SideUpdate, StreamHandle};
use super::ports::PortPair;
use super::relay::Side;
use super::sdp::{self, StreamInfo};
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
    pub fn new(engine: &Arc<MediaEngine>, events: EventSink) -> RelayMedia {
        RelayMedia { stream: engine.open(events), legs: HashMap::new(), b: None, engine: engine.clone() }
    }

    /// The live figures (shared with the relay thread).
    pub fn figures_handle(&self) -> Arc<Figures> {
        self.stream.figures().clone()
    }

    /// The figures now.
    pub fn figures(figures: &Figures) -> CallFigures {
        CallFigures { pbx: figures.leg(Side::A), user: figures.leg(Side::B) }
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
        let pt_map = sdp::payload_map(&from, to.as_deref().unwrap_or(&[]));
        let event = |f: &[sdp::Format]| f.iter().find(|f| f.is_event()).map(|f| f.pt);
        let events_in = [event(&theirs.formats), me.ours.as_ref().and_then(|(_, i)| event(&i.formats))];
        let events_out = event(&theirs.formats);
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
    fn add_leg(&mut self, leg: LegId, peer: SocketAddr, local: SocketAddr) {
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
        self.legs
            .insert(leg, LegMedia { sdp_ip, family, pair: None, theirs: None, ours: None, session_id, version: 1 });
    }

    fn offer(&mut self, from: LegId, to: LegId, offer: &Body) -> Result<Body, MediaError> {
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
        let mut desc = sdp::parse(answer)?;
        let info = sdp::stream_info(&desc);
        self.ensure_pair(from)?;
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
            && l.pair.take().is_some()
        {
            self.stream.close_leg(leg.0);
        }
        if self.b == Some(leg) {
            self.b = None;
        }
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
