//! Calls set up through rtpengine's ng control protocol (bencode over UDP,
//! each message prefixed by a cookie that its reply repeats).
//!
//! Per call: `offer` with the PBX endpoint's SDP (the reply's SDP is where
//! the phone sends), `answer` with the phone endpoint's SDP (the reply is
//! where the PBX sends), and `delete` at the end. The flags make rtpengine
//! a plain RTP/AVP relay: ICE removed, origin and session connection
//! replaced, no transcoding. Requests are pipelined (any number in flight)
//! and resent with the same cookie (rtpengine answers a repeated cookie
//! from its cache) after 1 s and 2 s before the call is given up.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use crate::bencode::{self, Value};
use crate::clock::SEC;
use crate::sdp::{self, Audio};
use crate::signal::{Event, Signalling};

const RETRIES: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Offering,
    Answering,
    Up,
    Deleting,
    Done,
}

#[derive(Debug)]
struct Call {
    state: State,
    phone_rtp: SocketAddr,
    /// Where the phone sends (from the offer's reply).
    phone_dest: Option<SocketAddr>,
    cookie: String,
    msg: Vec<u8>,
    tries: u32,
    timer_gen: u32,
}

/// The ng engine.
pub struct Ng {
    sock: UdpSocket,
    server: SocketAddr,
    run: u32,
    step: u32,
    next_cookie: u64,
    calls: Vec<Option<Call>>,
    pending: HashMap<String, u32>,
    timers: BinaryHeap<Reverse<(u64, u32, u32)>>,
    events: VecDeque<Event>,
    tallies: BTreeMap<String, u64>,
    buf: Vec<u8>,
}

impl Ng {
    /// An engine talking to rtpengine's ng listener at `server`.
    pub fn new(server: SocketAddr, run: u32) -> std::io::Result<Ng> {
        let local: SocketAddr =
            if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().map_err(std::io::Error::other)?;
        let sock = crate::net::bind_udp(local, Some(4 << 20), false)?;
        Ok(Ng {
            sock,
            server,
            run,
            step: 0,
            next_cookie: 0,
            calls: Vec::new(),
            pending: HashMap::new(),
            timers: BinaryHeap::new(),
            events: VecDeque::new(),
            tallies: BTreeMap::new(),
            buf: vec![0; 65536],
        })
    }

    fn tally(&mut self, key: &str) {
        *self.tallies.entry(key.to_owned()).or_default() += 1;
    }

    fn call_id(&self, call: u32) -> String {
        format!("ml-{:08x}-{}-{call}", self.run, self.step)
    }

    fn request(&mut self, now: u64, call: u32, command: &str, sdp: Option<String>) {
        let mut items = vec![
            ("command", Value::str(command)),
            ("call-id", Value::str(&self.call_id(call))),
            ("from-tag", Value::str(&format!("pbx-{call}"))),
        ];
        if command == "answer" {
            items.push(("to-tag", Value::str(&format!("phone-{call}"))));
        }
        if let Some(sdp) = sdp {
            items.push(("sdp", Value::str(&sdp)));
            items.push(("replace", Value::strs(&["origin", "session-connection"])));
            items.push(("ICE", Value::str("remove")));
            items.push(("transport-protocol", Value::str("RTP/AVP")));
        }
        self.next_cookie += 1;
        let cookie = format!("{:x}.{}", self.run, self.next_cookie);
        let mut msg = cookie.clone().into_bytes();
        msg.push(b' ');
        Value::dict(items).encode_into(&mut msg);
        let Some(Some(c)) = self.calls.get_mut(call as usize) else { return };
        let old = std::mem::replace(&mut c.cookie, cookie.clone());
        c.msg = msg;
        c.tries = 0;
        c.timer_gen += 1;
        let gen_ = c.timer_gen;
        self.pending.remove(&old);
        self.pending.insert(cookie, call);
        self.timers.push(Reverse((now + SEC, call, gen_)));
        self.send(call);
    }

    fn send(&mut self, call: u32) {
        if let Some(Some(c)) = self.calls.get(call as usize)
            && self.sock.send_to(&c.msg, self.server).is_err()
        {
            self.tally("ng_send_errors");
        }
    }

    fn finish(&mut self, call: u32, ev: Event, state: State) {
        if let Some(Some(c)) = self.calls.get_mut(call as usize) {
            c.state = state;
            c.timer_gen += 1;
            let cookie = std::mem::take(&mut c.cookie);
            self.pending.remove(&cookie);
        }
        self.events.push_back(ev);
    }

    fn handle_reply(&mut self, now: u64, data: &[u8]) {
        let Some(space) = data.iter().position(|&b| b == b' ') else {
            self.tally("ng_malformed");
            return;
        };
        let cookie = String::from_utf8_lossy(&data[..space]).into_owned();
        let Some(&call) = self.pending.get(&cookie) else {
            self.tally("ng_unmatched");
            return;
        };
        let reply = match bencode::decode(&data[space + 1..]) {
            Ok(v) => v,
            Err(_) => {
                self.tally("ng_malformed");
                return;
            }
        };
        let Some(Some(c)) = self.calls.get(call as usize) else { return };
        let state = c.state;
        let result = reply.get("result").and_then(Value::as_text).unwrap_or_default();
        if result != "ok" {
            let why = reply.get("error-reason").and_then(Value::as_text).unwrap_or(result);
            self.tally(&format!("ng_error: {why}"));
            match state {
                State::Deleting => self.finish(call, Event::Ended { call }, State::Done),
                _ => self.finish(call, Event::Failed { call, reason: format!("ng {why}") }, State::Done),
            }
            return;
        }
        let dest = match reply.get("sdp").and_then(Value::as_bytes).map(sdp::audio_destination) {
            Some(Ok(Audio::At(a))) => Some(a),
            _ => None,
        };
        match state {
            State::Offering => {
                let Some(d) = dest else {
                    self.finish(call, Event::Failed { call, reason: "ng offer: no audio in SDP".into() }, State::Done);
                    return;
                };
                let sdp_text = match self.calls.get_mut(call as usize) {
                    Some(Some(c)) => {
                        c.phone_dest = Some(d);
                        c.state = State::Answering;
                        sdp::describe(u64::from(call), 1, c.phone_rtp)
                    }
                    _ => return,
                };
                self.request(now, call, "answer", Some(sdp_text));
            }
            State::Answering => {
                let phone_dest = match self.calls.get(call as usize) {
                    Some(Some(c)) => c.phone_dest,
                    _ => None,
                };
                match (dest, phone_dest) {
                    (Some(pbx_dest), Some(phone_dest)) => {
                        self.finish(call, Event::Up { call, dest: [pbx_dest, phone_dest] }, State::Up)
                    }
                    _ => self.finish(
                        call,
                        Event::Failed { call, reason: "ng answer: no audio in SDP".into() },
                        State::Done,
                    ),
                }
            }
            State::Deleting => self.finish(call, Event::Ended { call }, State::Done),
            State::Up | State::Done => self.tally("ng_late_reply"),
        }
    }
}

impl Signalling for Ng {
    fn fds(&self) -> Vec<RawFd> {
        vec![self.sock.as_raw_fd()]
    }

    fn begin_step(&mut self, step: u32) {
        self.step = step;
        self.calls.clear();
        self.pending.clear();
        self.timers.clear();
        self.events.clear();
    }

    fn start_call(&mut self, now: u64, call: u32, pbx_rtp: SocketAddr, phone_rtp: SocketAddr) {
        let i = call as usize;
        if self.calls.len() <= i {
            self.calls.resize_with(i + 1, || None);
        }
        self.calls[i] = Some(Call {
            state: State::Offering,
            phone_rtp,
            phone_dest: None,
            cookie: String::new(),
            msg: Vec::new(),
            tries: 0,
            timer_gen: 0,
        });
        self.request(now, call, "offer", Some(sdp::describe(u64::from(call), 1, pbx_rtp)));
    }

    fn end_call(&mut self, now: u64, call: u32) {
        match self.calls.get_mut(call as usize) {
            Some(Some(c)) if matches!(c.state, State::Up | State::Offering | State::Answering) => {
                c.state = State::Deleting;
            }
            _ => return,
        }
        self.request(now, call, "delete", None);
    }

    fn handle_readable(&mut self, now: u64) {
        loop {
            let mut buf = std::mem::take(&mut self.buf);
            let got = self.sock.recv_from(&mut buf);
            match got {
                Ok((n, from)) => {
                    if from == self.server {
                        self.handle_reply(now, &buf[..n]);
                    } else {
                        self.tally("ng_foreign_source");
                    }
                    self.buf = buf;
                }
                Err(_) => {
                    self.buf = buf;
                    return;
                }
            }
        }
    }

    fn handle_timeout(&mut self, now: u64) {
        while let Some(&Reverse((at, call, gen_))) = self.timers.peek() {
            if at > now {
                return;
            }
            self.timers.pop();
            let (state, tries) = match self.calls.get_mut(call as usize) {
                Some(Some(c)) if c.timer_gen == gen_ && c.state != State::Done && c.state != State::Up => {
                    c.tries += 1;
                    (c.state, c.tries)
                }
                _ => continue,
            };
            if tries > RETRIES {
                self.tally("ng_timeouts");
                let ev = match state {
                    State::Deleting => Event::Ended { call },
                    _ => Event::Failed { call, reason: "ng timeout".into() },
                };
                self.finish(call, ev, State::Done);
                continue;
            }
            self.tally("ng_retransmissions");
            self.send(call);
            self.timers.push(Reverse((now + SEC * (1 << tries), call, gen_)));
        }
    }

    fn poll_timeout(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn tallies(&self) -> BTreeMap<String, u64> {
        self.tallies.clone()
    }
}
