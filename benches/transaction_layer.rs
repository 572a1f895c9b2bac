//! The transaction layer in a busy node's steady state: every call's four
//! transactions (server and client INVITE, server and client BYE) run
//! through it while 32 s of earlier calls' transactions linger (Timers
//! J, L, M; K for 5 s), as at 5000 calls a second, in virtual time.
//!
//! `cargo bench --bench transaction_layer`; figures go to bench/RESULTS.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use trunkgate::sip::transaction::{
    Grid, LINGER_GRID, Method, Reliability, RequestInfo, RequestMatch, ResponseInfo, StatusCode, TimerConfig,
    TransactionLayer,
};

/// The daemon's allocator (src/main.rs), so that allocation costs as there.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Calls a second the steady state is built for.
const RATE: u64 = 5000;

struct Node {
    layer: TransactionLayer<&'static str>,
    now: Instant,
    calls: u64,
    branch: String,
    call_id: String,
}

fn request<'a>(
    method: Method,
    branch: &'a str,
    call_id: &'a str,
    cseq: u32,
    to_tag: Option<&'a str>,
) -> RequestInfo<'a> {
    RequestInfo {
        method,
        branch: Some(branch),
        sent_by: "198.51.100.10:5060",
        request_uri: "sip:+15550001@192.0.2.1",
        call_id,
        cseq,
        from_tag: Some("from-tag"),
        to_tag,
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::new(code).expect("a valid status")
}

impl Node {
    fn new() -> Node {
        // The bench is the driver: it reads the clock once, for the origin.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let config =
            TimerConfig { linger_grid: Some(Grid { origin: now, step: LINGER_GRID }), ..TimerConfig::default() };
        Node { layer: TransactionLayer::new(config), now, calls: 0, branch: String::new(), call_id: String::new() }
    }

    fn drain(&mut self) {
        while let Some(e) = self.layer.poll_event() {
            black_box(e);
        }
        while let Some(t) = self.layer.poll_transmit() {
            black_box(t);
        }
    }

    /// One call's transactions, then the clock moves on by 1/RATE s and
    /// whatever is due fires.
    fn call(&mut self) {
        use std::fmt::Write;
        let n = self.calls;
        self.calls += 1;
        let now = self.now;
        self.call_id.clear();
        let _ = write!(self.call_id, "{n:016x}@198.51.100.10");
        // The PBX's INVITE, answered.
        self.branch.clear();
        let _ = write!(self.branch, "z9hG4bK-a-{n:x}");
        let info = request(Method::INVITE, &self.branch, &self.call_id, 1, None);
        let RequestMatch::New(a) = self.layer.handle_request(now, &info, Reliability::Unreliable) else {
            panic!("a new INVITE");
        };
        self.drain();
        // The B leg's INVITE, ringing then answered.
        self.branch.clear();
        let _ = write!(self.branch, "z9hG4bK-b-{n:x}");
        let b =
            self.layer.start_client(now, Method::INVITE, &self.branch, Reliability::Unreliable, "INVITE").expect("b");
        self.drain();
        for code in [180, 200] {
            let r = ResponseInfo { status: status(code), branch: Some(&self.branch), method: Method::INVITE };
            assert_eq!(self.layer.handle_response(now, &r).as_ref(), Some(&b));
            self.drain();
        }
        self.layer.send_response(now, &a, status(180), Some("to-tag"), "180").expect("180");
        self.layer.send_response(now, &a, status(200), Some("to-tag"), "200").expect("200");
        self.drain();
        // The PBX's ACK (to the TU) and, later, its BYE, answered.
        self.branch.clear();
        let _ = write!(self.branch, "z9hG4bK-c-{n:x}");
        let ack = request(Method::ACK, &self.branch, &self.call_id, 1, Some("to-tag"));
        let passed = self.layer.handle_request(now, &ack, Reliability::Unreliable);
        assert!(matches!(passed, RequestMatch::AckToTu { .. }));
        self.branch.clear();
        let _ = write!(self.branch, "z9hG4bK-d-{n:x}");
        let bye = request(Method::new("BYE"), &self.branch, &self.call_id, 2, Some("to-tag"));
        let RequestMatch::New(c) = self.layer.handle_request(now, &bye, Reliability::Unreliable) else {
            panic!("a new BYE");
        };
        self.layer.send_response(now, &c, status(200), Some("to-tag"), "200").expect("200");
        self.drain();
        // The B leg's BYE, answered.
        self.branch.clear();
        let _ = write!(self.branch, "z9hG4bK-e-{n:x}");
        let d =
            self.layer.start_client(now, Method::new("BYE"), &self.branch, Reliability::Unreliable, "BYE").expect("d");
        let r = ResponseInfo { status: status(200), branch: Some(&self.branch), method: Method::new("BYE") };
        assert_eq!(self.layer.handle_response(now, &r).as_ref(), Some(&d));
        self.drain();
        self.now += Duration::from_nanos(1_000_000_000 / RATE);
        if self.layer.poll_timeout().is_some_and(|t| t <= self.now) {
            self.layer.handle_timeout(self.now);
            self.drain();
        }
    }
}

fn steady_state(c: &mut Criterion) {
    let mut node = Node::new();
    // 40 s of calls: the first ones' transactions have ended, the last
    // 32 s's linger, as in a node that has run a while.
    for _ in 0..RATE * 40 {
        node.call();
    }
    let lingering = node.layer.len();
    assert!(lingering as u64 > RATE * 32 * 3, "{lingering} transactions alive");
    c.bench_function("transaction_layer_call_at_5000_cps_steady_state", |b| b.iter(|| node.call()));
}

criterion_group!(benches, steady_state);
criterion_main!(benches);
