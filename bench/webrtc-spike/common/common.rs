//! Shared, library-independent pieces of the spike: the shared-port
//! demultiplexer's STUN USERNAME peek, process figures, a counting allocator
//! and a tiny HTTP signalling endpoint (POST /offer -> answer SDP).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Live heap bytes (allocations minus frees), process-wide.
pub static HEAP: AtomicIsize = AtomicIsize::new(0);

pub struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        HEAP.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        HEAP.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        HEAP.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

/// (VmRSS kB, OS threads) of this process from /proc/self/status.
pub fn proc_figures() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("Threads:"))
}

#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    pub rss_kb: u64,
    pub threads: u64,
    pub heap: isize,
}

pub fn snapshot() -> Snapshot {
    let (rss_kb, threads) = proc_figures();
    Snapshot { rss_kb, threads, heap: HEAP.load(Ordering::Relaxed) }
}

pub fn per_leg_report(name: &str, legs: usize, base: Snapshot, now: Snapshot) -> String {
    let n = legs.max(1) as f64;
    format!(
        "{name}: legs={legs} rss_base_kb={} rss_kb={} rss_delta_per_leg_kb={:.1} \
         heap_base={} heap={} heap_delta_per_leg_bytes={:.0} threads_base={} threads={}",
        base.rss_kb,
        now.rss_kb,
        (now.rss_kb as f64 - base.rss_kb as f64) / n,
        base.heap,
        now.heap,
        (now.heap - base.heap) as f64 / n,
        base.threads,
        now.threads,
    )
}

/// The local (our) ufrag from a STUN binding request's USERNAME
/// ("<our ufrag>:<peer ufrag>"), the key that routes a new 5-tuple to a leg.
pub fn stun_local_ufrag(buf: &[u8]) -> Option<&str> {
    if buf.len() < 20 || buf[0] >= 2 || buf[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    let mut i = 20;
    while i + 4 <= buf.len() {
        let typ = u16::from_be_bytes([buf[i], buf[i + 1]]);
        let len = u16::from_be_bytes([buf[i + 2], buf[i + 3]]) as usize;
        let v = buf.get(i + 4..i + 4 + len)?;
        if typ == 0x0006 {
            let s = std::str::from_utf8(v).ok()?;
            return s.split(':').next();
        }
        i += 4 + ((len + 3) & !3);
    }
    None
}

/// An offer handed to the relay thread, and where its answer goes.
pub type OfferReq = (String, mpsc::Sender<String>);

/// Serve HTTP on `listener`: GET / -> `page`, POST /offer -> answer from the
/// relay thread, GET /report -> `report`'s current text.
pub fn serve_http(
    listener: TcpListener,
    page: &'static str,
    offers: mpsc::Sender<OfferReq>,
    report: Arc<Mutex<String>>,
) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut r = BufReader::new(stream.try_clone().unwrap());
        let mut first = String::new();
        if r.read_line(&mut first).is_err() {
            continue;
        }
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        let _ = r.read_exact(&mut body);
        let (ctype, out) = if first.starts_with("POST /offer") {
            let (tx, rx) = mpsc::channel();
            offers.send((String::from_utf8_lossy(&body).into_owned(), tx)).unwrap();
            ("application/sdp", rx.recv().unwrap_or_default())
        } else if first.starts_with("GET /report") {
            ("text/plain", report.lock().unwrap().clone())
        } else {
            ("text/html", page.to_string())
        };
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{out}",
            out.len()
        );
    }
}

/// POST an offer, return the answer.
pub fn http_post(addr: SocketAddr, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("signalling connect");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("signalling connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// The browser page: Chromium offers audio with the fake mic, we answer.
pub const PAGE: &str = r#"<!doctype html><html><body><pre id=log></pre><script>
window.run = async () => {
  const pc = new RTCPeerConnection({bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require'});
  window.pc = pc;
  const stream = await navigator.mediaDevices.getUserMedia({audio: true});
  const tr = pc.addTransceiver(stream.getAudioTracks()[0], {direction: 'sendrecv'});
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  await new Promise(r => { if (pc.iceGatheringState === 'complete') r(); else pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); setTimeout(r, 2000); });
  const resp = await fetch('/offer', {method: 'POST', body: pc.localDescription.sdp});
  const answer = await resp.text();
  window.offerSdp = pc.localDescription.sdp; window.answerSdp = answer;
  await pc.setRemoteDescription({type: 'answer', sdp: answer});
  return answer;
};
window.stats = async () => {
  const out = {conn: pc.connectionState, ice: pc.iceConnectionState};
  (await pc.getStats()).forEach(s => {
    if (s.type === 'inbound-rtp') { out.inboundPackets = s.packetsReceived; out.inboundCodec = s.codecId; out.inboundBytes = s.bytesReceived; }
    if (s.type === 'outbound-rtp') { out.outboundPackets = s.packetsSent; }
    if (s.type === 'transport') { out.dtlsState = s.dtlsState; out.tlsVersion = s.tlsVersion; out.dtlsCipher = s.dtlsCipher; out.srtpCipher = s.srtpCipher; out.dtlsRole = s.dtlsRole; }
    if (s.type === 'codec') { (out.codecs = out.codecs || []).push(s.mimeType + '/' + s.payloadType); }
  });
  return out;
};
window.dtmf = (tones) => { const s = pc.getSenders()[0]; s.dtmf.insertDTMF(tones, 100, 70); return s.dtmf.canInsertDTMF; };
</script></body></html>"#;
