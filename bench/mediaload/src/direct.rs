//! No relay: each side sends straight to the other's endpoint. The
//! generator's own ceiling and cost on this box (the baseline the relayed
//! figures are read against, as the SIP harness has its UAC→UAS baseline).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::signal::{Event, Signalling};

/// Calls that are up as soon as they are started.
#[derive(Default)]
pub struct Direct {
    events: VecDeque<Event>,
}

impl Signalling for Direct {
    fn fds(&self) -> Vec<RawFd> {
        Vec::new()
    }

    fn begin_step(&mut self, _step: u32) {
        self.events.clear();
    }

    fn start_call(&mut self, _now: u64, call: u32, pbx_rtp: SocketAddr, phone_rtp: SocketAddr) {
        self.events.push_back(Event::Up { call, dest: [phone_rtp, pbx_rtp] });
    }

    fn end_call(&mut self, _now: u64, call: u32) {
        self.events.push_back(Event::Ended { call });
    }

    fn handle_readable(&mut self, _now: u64) {}

    fn handle_timeout(&mut self, _now: u64) {}

    fn poll_timeout(&self) -> Option<u64> {
        None
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn tallies(&self) -> BTreeMap<String, u64> {
        BTreeMap::new()
    }
}
