//! Configuration: the TOML schema, its validation and the loading of trunk files.
//!
//! One main file (`trunkgate.toml`) plus, optionally, a folder of trunk files
//! (`trunks.d/*.toml`), each of which may hold `[[trunk]]` tables of the same
//! shape as the main file. Every error is reported with the file, line and
//! column it comes from, and all errors of all files are collected so an
//! operator fixes them in one pass.

mod error;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::admission::{Reason, RefusalAnswers};

pub use crate::transport::{ListenAddr, Transport};
pub use error::{ConfigError, ConfigErrors, Location};

/// Default path of the main configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/trunkgate/trunkgate.toml";
/// Default state directory when neither the environment nor the file names one.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/trunkgate";

/// The whole configuration as written in `trunkgate.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this node in the fleet: written into leases and call records.
    /// Default: the host name.
    #[serde(default)]
    pub node_id: Option<Spanned<String>>,
    /// Directory for the embedded database and other state. Relative paths are
    /// taken from the working directory. systemd's `STATE_DIRECTORY` overrides it.
    /// Default: `/var/lib/trunkgate`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Folder of extra trunk files (`*.toml`, each with `[[trunk]]` tables),
    /// relative to the folder of this file. Default: `trunks.d` (skipped when absent).
    #[serde(default)]
    pub trunks_dir: Option<PathBuf>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The shared database.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// SIP listeners and protocol settings.
    #[serde(default)]
    pub sip: SipConfig,
    /// The registrar of portal users.
    #[serde(default)]
    pub registrar: RegistrarSection,
    /// Digest authentication and lockout.
    #[serde(default)]
    pub auth: AuthSection,
    /// Call admission: the answers to refused calls.
    #[serde(default)]
    pub admission: AdmissionSection,
    /// Media anchoring: the RTP relay's addresses, ports and timeouts.
    #[serde(default)]
    pub media: MediaSection,
    /// TLS of the `wss://` listeners (and the softphone page).
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// Trunks defined inline; more may come from `trunks_dir`.
    #[serde(default)]
    pub trunk: Vec<TrunkConfig>,
}

/// `[tls]`: the certificate of `wss://` listeners, which browsers check
/// (the softphone page and SIP over secure WebSocket share it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file with the certificate chain, leaf first (e.g. Let's
    /// Encrypt's `fullchain.pem`). Relative to the folder of this file.
    pub certificate: Spanned<PathBuf>,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or
    /// SEC1). Relative to the folder of this file.
    pub private_key: Spanned<PathBuf>,
}

/// `[media]`: every call's media flows through trunkgate's RTP relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSection {
    /// Relay media (`true`), or pass SDP unchanged so the PBX and the phones
    /// exchange media directly (`false`: only where they can reach each
    /// other, e.g. one LAN). Default: `true`.
    #[serde(default = "default_true")]
    pub anchor: bool,
    /// The address written into SDP toward peers, at most one per address
    /// family (e.g. `["203.0.113.7", "2001:db8::7"]`; behind 1:1 NAT, the
    /// public one). Default: the node's SIP address toward each peer.
    #[serde(default)]
    pub public_address: Vec<Spanned<String>>,
    /// Local addresses the RTP sockets bind to, at most one per family.
    /// Default: `["0.0.0.0", "::"]`.
    #[serde(default)]
    pub bind_address: Vec<Spanned<String>>,
    /// First port of the RTP/RTCP range (each leg takes an even/odd pair).
    /// Default: 10000.
    #[serde(default = "default_port_min")]
    pub port_min: u16,
    /// Last port of the range. Default: 19999.
    #[serde(default = "default_port_max")]
    pub port_max: u16,
    /// A leg that sends no RTP and no RTCP this long ends its call (BYE on
    /// both legs, reason `media-timeout`), seconds; 0 disables. Default: 60.
    #[serde(default = "default_media_timeout_s")]
    pub timeout_s: u64,
    /// The same while the call is on hold, seconds; 0 disables. Default: 3600.
    #[serde(default = "default_hold_timeout_s")]
    pub hold_timeout_s: u64,
    /// Relay threads; 0 means one per CPU. Default: 0.
    #[serde(default)]
    pub threads: usize,
    /// Send each relay thread's packets of a wake-up, across all its
    /// sockets, in one io_uring submission (else one `sendmmsg` per
    /// socket); unavailable io_uring falls back by itself. Experimental:
    /// less CPU per packet, but more latency near saturation (see
    /// bench/RESULTS.md). Default: false.
    #[serde(default)]
    pub io_uring: bool,
    /// The one UDP port (per address family, on `bind_address`) that every
    /// browser (WebRTC) leg of the node shares: ICE, DTLS and SRTP of all
    /// browsers, told apart by their ICE username and address, so browsers
    /// need no port range. Outside `port_min`..`port_max`; 0 picks a free
    /// port at start (tests). Default: 20000.
    #[serde(default = "default_webrtc_port")]
    pub webrtc_port: u16,
}

fn default_webrtc_port() -> u16 {
    20_000
}

impl Default for MediaSection {
    fn default() -> Self {
        Self {
            anchor: true,
            public_address: Vec::new(),
            bind_address: Vec::new(),
            port_min: default_port_min(),
            port_max: default_port_max(),
            timeout_s: default_media_timeout_s(),
            hold_timeout_s: default_hold_timeout_s(),
            threads: 0,
            io_uring: false,
            webrtc_port: default_webrtc_port(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_port_min() -> u16 {
    10_000
}
fn default_port_max() -> u16 {
    19_999
}
fn default_media_timeout_s() -> u64 {
    60
}
fn default_hold_timeout_s() -> u64 {
    3600
}

/// `[media]` resolved: addresses parsed, one per family at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSettings {
    /// Relay media (else SDP passes unchanged).
    pub anchor: bool,
    /// SDP address for IPv4 peers, if configured.
    pub public_v4: Option<std::net::Ipv4Addr>,
    /// SDP address for IPv6 peers, if configured.
    pub public_v6: Option<std::net::Ipv6Addr>,
    /// Bind address for IPv4 sockets.
    pub bind_v4: std::net::Ipv4Addr,
    /// Bind address for IPv6 sockets.
    pub bind_v6: std::net::Ipv6Addr,
    /// Port range.
    pub port_min: u16,
    /// Port range.
    pub port_max: u16,
    /// Silence that ends a call.
    pub timeout: Option<std::time::Duration>,
    /// Silence that ends a held call.
    pub hold_timeout: Option<std::time::Duration>,
    /// Relay threads (resolved: at least 1).
    pub threads: usize,
    /// Batch sends across sockets with io_uring when available.
    pub io_uring: bool,
    /// The browsers' shared UDP port (0: any free port).
    pub webrtc_port: u16,
    /// Browsers can reach the node (a `ws://` or `wss://` listener): the
    /// shared port is bound.
    pub browsers: bool,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            anchor: true,
            public_v4: None,
            public_v6: None,
            bind_v4: std::net::Ipv4Addr::UNSPECIFIED,
            bind_v6: std::net::Ipv6Addr::UNSPECIFIED,
            port_min: default_port_min(),
            port_max: default_port_max(),
            timeout: Some(std::time::Duration::from_secs(default_media_timeout_s())),
            hold_timeout: Some(std::time::Duration::from_secs(default_hold_timeout_s())),
            threads: 1,
            io_uring: false,
            webrtc_port: default_webrtc_port(),
            browsers: false,
        }
    }
}

fn parse_media(config: &Config, path: &Path, sources: &SourceMap, errors: &mut ConfigErrors) -> MediaSettings {
    let m = &config.media;
    let mut out = MediaSettings {
        anchor: m.anchor,
        io_uring: m.io_uring,
        webrtc_port: m.webrtc_port,
        browsers: config
            .sip
            .listen
            .iter()
            .any(|l| l.get_ref().parse::<ListenAddr>().is_ok_and(|l| l.transport.is_websocket())),
        port_min: m.port_min,
        port_max: m.port_max,
        timeout: (m.timeout_s > 0).then(|| std::time::Duration::from_secs(m.timeout_s)),
        hold_timeout: (m.hold_timeout_s > 0).then(|| std::time::Duration::from_secs(m.hold_timeout_s)),
        threads: if m.threads == 0 {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        } else {
            m.threads
        },
        ..MediaSettings::default()
    };
    let addrs = |list: &[Spanned<String>], what: &str, errors: &mut ConfigErrors| {
        let (mut v4, mut v6): (Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>) = (None, None);
        for a in list {
            match a.get_ref().parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(ip)) if v4.is_none() => v4 = Some(ip),
                Ok(std::net::IpAddr::V6(ip)) if v6.is_none() => v6 = Some(ip),
                Ok(_) => errors.push(sources.error(
                    path,
                    a.span(),
                    format!("[media] {what}: at most one address per family (`{}` is a second)", a.get_ref()),
                )),
                Err(_) => errors.push(sources.error(
                    path,
                    a.span(),
                    format!("[media] {what}: `{}` is no IP address", a.get_ref()),
                )),
            }
        }
        (v4, v6)
    };
    (out.public_v4, out.public_v6) = addrs(&m.public_address, "public_address", errors);
    if out.public_v4.is_some_and(|a| a.is_unspecified()) || out.public_v6.is_some_and(|a| a.is_unspecified()) {
        errors.push(sources.key_error(
            path,
            "public_address",
            "[media] public_address must be a reachable address, not 0.0.0.0 or ::",
        ));
    }
    let (b4, b6) = addrs(&m.bind_address, "bind_address", errors);
    out.bind_v4 = b4.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    out.bind_v6 = b6.unwrap_or(std::net::Ipv6Addr::UNSPECIFIED);
    if m.port_min < 1024 || m.port_max <= m.port_min {
        errors.push(sources.key_error(
            path,
            if m.port_min < 1024 { "port_min" } else { "port_max" },
            "[media] port_min must be at least 1024 and below port_max",
        ));
    } else if crate::media::ports::PortPool::new(m.port_min, m.port_max).is_err() {
        errors.push(sources.key_error(path, "port_max", "[media] the port range holds no RTP/RTCP pair"));
    }
    // One browsers' port per relay thread: webrtc_port .. webrtc_port + threads - 1.
    let last = u32::from(m.webrtc_port) + u32::try_from(out.threads.clamp(1, 64)).unwrap_or(64) - 1;
    if out.browsers
        && m.webrtc_port != 0
        && (u32::from(m.port_min) <= last && u32::from(m.webrtc_port) <= u32::from(m.port_max))
    {
        errors.push(sources.key_error(
            path,
            "webrtc_port",
            "[media] webrtc_port .. webrtc_port + threads - 1 (one browsers' port per relay thread) must lie outside port_min..port_max",
        ));
    } else if out.browsers && m.webrtc_port != 0 && last > 65_535 {
        errors.push(sources.key_error(path, "webrtc_port", "[media] webrtc_port + threads - 1 must be at most 65535"));
    }
    if m.threads > 64 {
        errors.push(sources.key_error(path, "threads", "[media] threads must be at most 64"));
    }
    if m.timeout_s > 0 && m.hold_timeout_s > 0 && m.hold_timeout_s < m.timeout_s {
        errors.push(sources.key_error(path, "hold_timeout_s", "[media] hold_timeout_s must be at least timeout_s"));
    }
    out
}

/// `[log]`: where and how the daemon logs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `human` (default) or `json` (one object per line, for log shippers).
    #[serde(default)]
    pub format: LogFormat,
    /// tracing filter directive, e.g. `info` or `trunkgate=debug,sqlx=warn`.
    /// `RUST_LOG` overrides it. Default: `info`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::default(), level: default_log_level() }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// `[database]`: the database shared by every node of the fleet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (embedded, one node) or `postgres://user@host/db` (a fleet).
    /// Default: `sqlite://<state_dir>/trunkgate.db`.
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    /// Largest number of pooled connections. Default: 8 (SQLite: 4).
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// How long a statement waits on a locked SQLite database, in milliseconds. Default: 5000.
    #[serde(default = "default_busy_timeout_ms")]
    pub busy_timeout_ms: u64,
    /// How long to wait for a connection before a call is refused
    /// (`database-unavailable`), in milliseconds. Default: 2000.
    #[serde(default = "default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: None,
            busy_timeout_ms: default_busy_timeout_ms(),
            acquire_timeout_ms: default_acquire_timeout_ms(),
        }
    }
}

fn default_busy_timeout_ms() -> u64 {
    5000
}
fn default_acquire_timeout_ms() -> u64 {
    2000
}

/// `[sip]`: listeners and protocol settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipConfig {
    /// Sockets to listen on, as `udp://ADDR:PORT` or `tcp://ADDR:PORT`
    /// (IPv6 as `udp://[::1]:5060`). Default: `["udp://127.0.0.1:5060", "tcp://127.0.0.1:5060"]`.
    /// (Parsed into [`Loaded::listen`]; kept as text here so an error points
    /// at the exact element.)
    #[serde(default = "default_listen")]
    pub listen: Vec<Spanned<String>>,
    /// Largest SIP message accepted, in bytes; larger input is refused. Default: 65536.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// RFC 3261 T1 (round-trip estimate), in milliseconds. Default: 500.
    #[serde(default = "default_t1_ms")]
    pub t1_ms: u64,
    /// RFC 3261 T2 (largest retransmission interval), in milliseconds. Default: 4000.
    #[serde(default = "default_t2_ms")]
    pub t2_ms: u64,
    /// RFC 3261 T4 (time a message stays in the network), in milliseconds. Default: 5000.
    #[serde(default = "default_t4_ms")]
    pub t4_ms: u64,
    /// Host written into `Warning: 399 <host> "..."` headers. Default: the node id.
    #[serde(default)]
    pub warning_host: Option<String>,
    /// Most TCP connections open at once; more are refused. Default: 4096.
    #[serde(default = "default_max_tcp_connections")]
    pub max_tcp_connections: usize,
    /// A TCP connection idle this long is closed, in seconds. Default: 600.
    #[serde(default = "default_tcp_idle_timeout_s")]
    pub tcp_idle_timeout_s: u64,
    /// Calls in progress on this node above which new calls are shed with
    /// `503` + Retry-After (`overloaded`), so the PBX fails over to another
    /// node. Default: 10000.
    #[serde(default = "default_max_calls")]
    pub max_calls: usize,
    /// Overload control's target wait in a SIP core's queue, milliseconds.
    /// When messages keep waiting longer than this for 200 ms (a standing
    /// queue, not a burst), each new INVITE that waited past it is answered
    /// at once with `503` + Retry-After (`overloaded`): the calls past what
    /// the node can carry are shed, whatever the cause, before its queues
    /// overflow. Retransmissions and requests within calls are never shed.
    /// 0 turns it off. Default: 50.
    #[serde(default = "default_overload_queue_ms")]
    pub overload_queue_ms: u64,
    /// A SIP core whose thread is busier than this, percent of its time
    /// over 100 ms, hands its UDP sends to a thread of its own, so the
    /// kernel's share of each send (on loopback, the receiver's too: about
    /// a fifth of a busy core) runs on another CPU; it sends them itself
    /// again once it is 40 points below. Idle, a core sends itself: a
    /// hand-over costs a wake-up. 0 = always hand over, 100 = never.
    /// Default: 70.
    #[serde(default = "default_send_thread_busy_pct")]
    pub send_thread_busy_pct: u32,
    /// What an INVITE from an address that is no trunk gets: `reject`
    /// (403 with `Warning: 399 … "unknown-trunk"`) or `ignore` (no answer at
    /// all, so scanners learn nothing; still logged). Default: `reject`.
    #[serde(default)]
    pub unknown_trunk: UnknownTrunk,
    /// SIP core tasks, each owning the transactions and calls of the
    /// Call-IDs that hash to it, and as many runtime worker threads to run
    /// them; 0 means one per two CPUs, at least one (see
    /// [`SipConfig::resolved_cores`]). Default: 0.
    #[serde(default)]
    pub cores: usize,
    /// RFC 4028 session interval asked of each leg, seconds: a leg whose
    /// dialog is not refreshed within it is hung up. Default: 1800.
    #[serde(default = "default_session_expires_s")]
    pub session_expires_s: u64,
    /// Shortest session interval accepted (`422` with `Min-SE` below it),
    /// seconds; at least 90 (RFC 4028). Default: 90.
    #[serde(default = "default_min_se_s")]
    pub min_se_s: u64,
    /// WebSocket connections are pinged at this interval, seconds, and
    /// closed after two intervals without a frame from the browser (its
    /// registrations and calls end with it). Default: 30.
    #[serde(default = "default_ws_ping_interval_s")]
    pub ws_ping_interval_s: u64,
}

impl SipConfig {
    /// The SIP cores, and runtime worker threads, the node runs: `cores`,
    /// or by default one per two CPUs (at least one, at most 16).
    ///
    /// Not one per CPU: a core's datagrams are received by a socket task
    /// and sent by the kernel, whose network processing (on loopback, the
    /// receiver's too), SQLite's writer thread and the media relays need
    /// CPUs as well. With a worker per CPU the workers keep waking and
    /// handing tasks to each other, and memory allocated on one thread is
    /// freed on another; on a 2-CPU machine one worker took 15-25 % less
    /// CPU per call than two, and was still clean at a rate where two
    /// were not (bench/RESULTS.md, issue 11).
    pub fn resolved_cores(&self) -> usize {
        match self.cores {
            0 => (std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) / 2).clamp(1, 16),
            n => n,
        }
    }
}

fn default_ws_ping_interval_s() -> u64 {
    30
}

fn default_session_expires_s() -> u64 {
    1800
}
fn default_min_se_s() -> u64 {
    90
}

/// Answer to INVITEs from unknown sources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownTrunk {
    /// 403 with a Warning.
    #[default]
    Reject,
    /// Silence.
    Ignore,
}

fn default_max_calls() -> usize {
    10_000
}

fn default_overload_queue_ms() -> u64 {
    50
}

fn default_send_thread_busy_pct() -> u32 {
    70
}

fn default_max_tcp_connections() -> usize {
    4096
}
fn default_tcp_idle_timeout_s() -> u64 {
    600
}

/// `[registrar]`: registrations of portal users.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrarSection {
    /// Shortest registration accepted, seconds; shorter ones get 423. Default: 60.
    #[serde(default = "default_min_expires_s")]
    pub min_expires_s: u64,
    /// Longest registration granted, seconds. Default: 3600.
    #[serde(default = "default_max_expires_s")]
    pub max_expires_s: u64,
    /// Registration granted when the phone asks for none, seconds. Default: 3600.
    #[serde(default = "default_max_expires_s")]
    pub default_expires_s: u64,
    /// Most contacts (devices) per user. Default: 10.
    #[serde(default = "default_max_contacts")]
    pub max_contacts_per_user: usize,
}

impl Default for RegistrarSection {
    fn default() -> Self {
        Self {
            min_expires_s: default_min_expires_s(),
            max_expires_s: default_max_expires_s(),
            default_expires_s: default_max_expires_s(),
            max_contacts_per_user: default_max_contacts(),
        }
    }
}

fn default_min_expires_s() -> u64 {
    60
}
fn default_max_expires_s() -> u64 {
    3600
}
fn default_max_contacts() -> usize {
    10
}

/// `[auth]`: SIP digest authentication of portal users.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Digest algorithms offered, one challenge each, most preferred first:
    /// `SHA-256`, `MD5`. Default: `["MD5"]`: many phones and test tools
    /// answer only the first challenge and know only MD5, so offering
    /// SHA-256 first locks them out; put `"SHA-256"` first where every
    /// device supports RFC 8760.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Spanned<String>>,
    /// How long a nonce stays valid, seconds. Default: 300.
    #[serde(default = "default_nonce_lifetime_s")]
    pub nonce_lifetime_s: u64,
    /// Failed authentications from one address, within `failure_window_s`,
    /// that lock the address out. Default: 10.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// Window over which failures are counted, seconds. Default: 60.
    #[serde(default = "default_failure_window_s")]
    pub failure_window_s: u64,
    /// How long a locked-out address is refused, seconds. Default: 300.
    #[serde(default = "default_lockout_s")]
    pub lockout_s: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            algorithms: default_algorithms(),
            nonce_lifetime_s: default_nonce_lifetime_s(),
            max_failures: default_max_failures(),
            failure_window_s: default_failure_window_s(),
            lockout_s: default_lockout_s(),
        }
    }
}

fn default_algorithms() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "MD5".to_owned())]
}
fn default_nonce_lifetime_s() -> u64 {
    300
}
fn default_max_failures() -> u32 {
    10
}
fn default_failure_window_s() -> u64 {
    60
}
fn default_lockout_s() -> u64 {
    300
}

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_message_bytes: default_max_message_bytes(),
            t1_ms: default_t1_ms(),
            t2_ms: default_t2_ms(),
            t4_ms: default_t4_ms(),
            warning_host: None,
            max_tcp_connections: default_max_tcp_connections(),
            tcp_idle_timeout_s: default_tcp_idle_timeout_s(),
            max_calls: default_max_calls(),
            overload_queue_ms: default_overload_queue_ms(),
            send_thread_busy_pct: default_send_thread_busy_pct(),
            unknown_trunk: UnknownTrunk::default(),
            cores: 0,
            session_expires_s: default_session_expires_s(),
            min_se_s: default_min_se_s(),
            ws_ping_interval_s: default_ws_ping_interval_s(),
        }
    }
}

fn default_listen() -> Vec<Spanned<String>> {
    ["udp://127.0.0.1:5060", "tcp://127.0.0.1:5060"].map(|s| Spanned::new(0..0, s.to_owned())).into()
}
fn default_max_message_bytes() -> usize {
    64 * 1024
}
fn default_t1_ms() -> u64 {
    500
}
fn default_t2_ms() -> u64 {
    4000
}
fn default_t4_ms() -> u64 {
    5000
}

/// `[admission]`: call admission.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionSection {
    /// The SIP status code answered for each refusal reason.
    #[serde(default)]
    pub answers: AnswersSection,
}

/// `[admission.answers]`: the SIP status code of each refusal, by reason
/// (the `Warning: 399` token, with `_` for `-`). Each is a final failure
/// code, 400 to 699 (401 and 407 excepted: they are challenges). Defaults:
/// DESIGN.md's admission table. `Retry-After` is not configurable: it goes
/// with `overloaded` and `database_unavailable` whatever their code.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswersSection {
    /// INVITE from an address that is no trunk (with `unknown_trunk =
    /// "reject"`), SIP status code. Default: 403.
    #[serde(default)]
    pub unknown_trunk: Option<Spanned<u16>>,
    /// This node sheds load (`max_calls`), SIP status code; sent with
    /// Retry-After. Default: 503.
    #[serde(default)]
    pub overloaded: Option<Spanned<u16>>,
    /// No portal has the trunk's portal id, SIP status code. Default: 403.
    #[serde(default)]
    pub portal_not_found: Option<Spanned<u16>>,
    /// The portal is being deleted or is deleted, SIP status code. Default: 403.
    #[serde(default)]
    pub portal_deleted: Option<Spanned<u16>>,
    /// The portal is blocked (stored, or for inactivity), SIP status code.
    /// Default: 403.
    #[serde(default)]
    pub portal_blocked: Option<Spanned<u16>>,
    /// The licence ended, grace included, under the `block` policy, SIP
    /// status code. Default: 403.
    #[serde(default)]
    pub licence_expired: Option<Spanned<u16>>,
    /// No SIP connector channel in force, SIP status code. Default: 403.
    #[serde(default)]
    pub not_licensed: Option<Spanned<u16>>,
    /// Every channel of the portal is in use across the fleet, SIP status
    /// code. Default: 486.
    #[serde(default)]
    pub channels_busy: Option<Spanned<u16>>,
    /// The portal's call rate is at its limit, SIP status code (no
    /// Retry-After). Default: 503.
    #[serde(default)]
    pub rate_limited: Option<Spanned<u16>>,
    /// The dialled number routes to no user, SIP status code. Default: 404.
    #[serde(default)]
    pub no_route: Option<Spanned<u16>>,
    /// No user of the route can be rung, SIP status code. Default: 480.
    #[serde(default)]
    pub unavailable: Option<Spanned<u16>>,
    /// A portal user's outbound call their permission refuses, SIP status
    /// code. Default: 403.
    #[serde(default)]
    pub not_permitted: Option<Spanned<u16>>,
    /// The shared database cannot be reached, SIP status code; sent with
    /// Retry-After. Default: 503.
    #[serde(default)]
    pub database_unavailable: Option<Spanned<u16>>,
}

impl AnswersSection {
    /// Every reason with the code the file sets for it, if any.
    pub fn entries(&self) -> [(Reason, &Option<Spanned<u16>>); Reason::ALL.len()] {
        [
            (Reason::UnknownTrunk, &self.unknown_trunk),
            (Reason::Overloaded, &self.overloaded),
            (Reason::PortalNotFound, &self.portal_not_found),
            (Reason::PortalDeleted, &self.portal_deleted),
            (Reason::PortalBlocked, &self.portal_blocked),
            (Reason::LicenceExpired, &self.licence_expired),
            (Reason::NotLicensed, &self.not_licensed),
            (Reason::ChannelsBusy, &self.channels_busy),
            (Reason::RateLimited, &self.rate_limited),
            (Reason::NoRoute, &self.no_route),
            (Reason::Unavailable, &self.unavailable),
            (Reason::NotPermitted, &self.not_permitted),
            (Reason::DatabaseUnavailable, &self.database_unavailable),
        ]
    }
}

/// `[[trunk]]`: one PBX trunk and the portal it serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    /// Unique name of the trunk, used in logs, call records and metrics.
    pub name: Spanned<String>,
    /// Id of the portal in the database that this trunk's calls belong to,
    /// or `*` for a shared trunk (an operator's SBC) whose calls belong to
    /// the portal owning the Request-URI's domain.
    pub portal: Spanned<String>,
    /// Networks the PBX sends from, as CIDRs (`192.0.2.10/32`, `2001:db8::/64`).
    /// A bare address means that one host. (Parsed into
    /// [`LoadedTrunk::sources`].)
    pub sources: Vec<Spanned<String>>,
    /// Where the dialled number is read, first that has one wins:
    /// `request_uri`, `to`, `diversion` (the first Diversion header: the
    /// number a forwarded call was originally dialled to).
    /// Default: `["request_uri", "to"]`.
    #[serde(default = "default_number_from")]
    pub number_from: Vec<NumberSource>,
    /// Routing table from dialled number to portal users, first match wins.
    #[serde(default)]
    pub route: Vec<RouteConfig>,
    /// Where the portal's users' outgoing calls go through this PBX
    /// (absent: the trunk takes no outbound calls).
    #[serde(default)]
    pub outbound: Option<OutboundConfig>,
}

/// `[trunk.outbound]`: portal users' calls out through the PBX.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// The PBX: `udp://HOST[:PORT]` or `tcp://HOST[:PORT]` (port 5060 by
    /// default; a host name is resolved when the configuration loads).
    pub target: Spanned<String>,
    /// Lower first: a portal's outbound trunks are tried in this order.
    /// Default: 100.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// An outbound proxy in front of the PBX (`udp://HOST[:PORT]` or
    /// `tcp://…`): INVITEs go there with a `Route: <sip:proxy;lr>`, the
    /// Request-URI still naming the PBX. Default: none.
    pub outbound_proxy: Option<Spanned<String>>,
    /// Seconds without any answer to the INVITE before the next trunk is
    /// tried. Default: 5.
    #[serde(default = "default_invite_timeout_s")]
    pub invite_timeout_s: u32,
    /// Seconds a call may ring at the PBX before it is given up. Default: 120.
    #[serde(default = "default_answer_timeout_s")]
    pub answer_timeout_s: u32,
    /// Digest username for the PBX's 401/407 challenges.
    pub username: Option<Spanned<String>>,
    /// Digest password (prefer `password_file`).
    pub password: Option<Spanned<String>>,
    /// A file holding the password (first line), readable by trunkgate
    /// only; relative to this file's directory.
    pub password_file: Option<Spanned<PathBuf>>,
    /// Caller number presented when the user has none of their own.
    pub caller_number: Option<Spanned<String>>,
    /// Where the caller number goes: `from`, `pai` (P-Asserted-Identity),
    /// `rpid` (Remote-Party-ID). Default: `["from"]`.
    #[serde(default = "default_caller_id")]
    pub caller_id: Vec<CallerIdHeader>,
    /// Dialled-number rules, applied in this order: strip this prefix,
    /// convert the format, then add `add_prefix`.
    #[serde(default)]
    pub strip_prefix: Option<Spanned<String>>,
    /// `as_dialled` (default), `e164` (national numbers get
    /// `+<country_code>`), `national` (`+<country_code>…` becomes
    /// `<national_prefix>…`).
    #[serde(default)]
    pub number_format: NumberFormat,
    /// Country code for `number_format` (digits, no `+`).
    pub country_code: Option<Spanned<String>>,
    /// National trunk prefix for `number_format`. Default: "0".
    #[serde(default = "default_national_prefix")]
    pub national_prefix: String,
    /// International call prefix for `number_format` (`00`; `011` in
    /// North America). Default: "00".
    #[serde(default = "default_international_prefix")]
    pub international_prefix: String,
    /// Prefix added last.
    #[serde(default)]
    pub add_prefix: Option<Spanned<String>>,
    /// Seconds between OPTIONS pings to the PBX (0: none). A PBX that does
    /// not answer two in a row (or answers 5xx) is marked down and skipped
    /// by outbound calls until it answers again. Default: 30.
    #[serde(default = "default_options_interval_s")]
    pub options_interval_s: u32,
    /// Cloud PBX: keep a registration at the provider's registrar, so
    /// calls to the account reach this node wherever the provider sends
    /// from. Default: false.
    #[serde(default)]
    pub register: bool,
    /// The registrar: `udp://HOST[:PORT]` or `tcp://…`. Default: `target`.
    pub registrar: Option<Spanned<String>>,
    /// The account (the AOR's user part). Default: `username`.
    pub account: Option<Spanned<String>>,
    /// The AOR's domain. Default: the registrar's host.
    pub domain: Option<Spanned<String>>,
    /// Expiry asked for, seconds (the registrar may grant less, or ask for
    /// more with 423). Default: 3600.
    #[serde(default = "default_register_expires_s")]
    pub register_expires_s: u32,
    /// Seconds before the first new attempt after a failed registration
    /// (doubling per failure in a row up to 1800, with jitter; a
    /// Retry-After wins). Default: 30.
    #[serde(default = "default_register_retry_s")]
    pub register_retry_s: u32,
    /// The user part of our registered Contact: an INVITE whose
    /// Request-URI names it belongs to this trunk, whatever address it
    /// comes from. Default: `tg-<trunk name>`.
    pub contact_user: Option<Spanned<String>>,
}

fn default_options_interval_s() -> u32 {
    30
}
fn default_register_expires_s() -> u32 {
    3600
}
fn default_register_retry_s() -> u32 {
    30
}

fn default_priority() -> u32 {
    100
}
fn default_invite_timeout_s() -> u32 {
    5
}
fn default_answer_timeout_s() -> u32 {
    120
}
fn default_caller_id() -> Vec<CallerIdHeader> {
    vec![CallerIdHeader::From]
}
fn default_national_prefix() -> String {
    "0".to_owned()
}
fn default_international_prefix() -> String {
    "00".to_owned()
}

/// A header that carries the caller's number toward the PBX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerIdHeader {
    /// The From URI's user part.
    From,
    /// P-Asserted-Identity (RFC 3325).
    Pai,
    /// Remote-Party-ID (draft-ietf-sip-privacy-04, still asked by many PBXs).
    Rpid,
}

/// How a dialled number is written toward the PBX.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberFormat {
    /// As the user dialled it.
    #[default]
    AsDialled,
    /// International, `+` and country code.
    E164,
    /// National, with the national prefix.
    National,
}

/// `[trunk.outbound]` resolved: where to send and how to authenticate.
#[derive(Debug, Clone)]
pub struct LoadedOutbound {
    /// Transport toward the PBX.
    pub transport: crate::transport::Transport,
    /// The host as written (Request-URI and To host).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The resolved address.
    pub addr: std::net::SocketAddr,
    /// Digest credentials (username, password).
    pub credentials: Option<(String, String)>,
    /// `register = true`: where and as whom.
    pub registration: Option<LoadedRegistration>,
    /// The outbound proxy: (transport, host, port, address).
    pub proxy: Option<(crate::transport::Transport, String, u16, std::net::SocketAddr)>,
}

/// A cloud-PBX trunk's registration, resolved.
#[derive(Debug, Clone)]
pub struct LoadedRegistration {
    /// Transport to the registrar.
    pub transport: crate::transport::Transport,
    /// Registrar host as written (Request-URI).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Its address.
    pub addr: std::net::SocketAddr,
    /// AOR `sip:account@domain`.
    pub aor: String,
    /// Our Contact's user part.
    pub contact_user: String,
    /// Expiry asked for.
    pub expires: std::time::Duration,
    /// First wait after a failure.
    pub retry: std::time::Duration,
}

/// A place in an INVITE that holds the dialled number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberSource {
    /// The Request-URI's user part (or tel: number).
    RequestUri,
    /// The To URI's user part.
    To,
    /// The first Diversion header's URI user part.
    Diversion,
}

fn default_number_from() -> Vec<NumberSource> {
    vec![NumberSource::RequestUri, NumberSource::To]
}

/// A trunk source network; a bare address is accepted as a host route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceNet(pub IpNet);

impl FromStr for SourceNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(SourceNet(net.trunc()));
        }
        if let Ok(ip) = s.parse::<std::net::IpAddr>() {
            return Ok(SourceNet(IpNet::from(ip)));
        }
        Err(format!("invalid source `{s}`: expected an address or a CIDR such as 192.0.2.10/32"))
    }
}

/// `[[trunk.route]]`: where a dialled number rings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Dialled number to match exactly, or `*` for any number.
    pub number: Spanned<String>,
    /// Portal users (usernames) to ring.
    pub users: Vec<Spanned<String>>,
    /// How the users are rung. Default: `ring_all`.
    #[serde(default)]
    pub strategy: RingStrategy,
    /// How long the call rings before it is given up (or moves to the next
    /// user for `in_order`), in seconds. Default: 30.
    #[serde(default = "default_ring_timeout_s")]
    pub ring_timeout_s: u32,
}

fn default_ring_timeout_s() -> u32 {
    30
}

/// Strategy for ringing a route's users.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RingStrategy {
    /// All users at once; the first to answer wins, the others are cancelled.
    #[default]
    RingAll,
    /// One after the other, each for `ring_timeout_s`.
    InOrder,
    /// One user per call, rotating so calls spread evenly.
    Evenly,
}

/// A trunk whose file of origin is known, for error messages.
#[derive(Debug, Clone)]
pub struct LoadedTrunk {
    /// The trunk as written.
    pub trunk: TrunkConfig,
    /// File it was read from.
    pub file: PathBuf,
    /// Its sources, parsed (same order as written).
    pub sources: Vec<SourceNet>,
    /// `[trunk.outbound]`, resolved.
    pub outbound: Option<LoadedOutbound>,
}

/// The configuration after loading and validation: every value resolved.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Main file path.
    pub path: PathBuf,
    /// The main file's content as parsed.
    pub config: Config,
    /// Every trunk, inline and from `trunks_dir`.
    pub trunks: Vec<LoadedTrunk>,
    /// Resolved node id.
    pub node_id: String,
    /// Resolved state directory.
    pub state_dir: PathBuf,
    /// Resolved database URL.
    pub database_url: String,
    /// SIP listeners, parsed.
    pub listen: Vec<ListenAddr>,
    /// The SIP answer to each refusal, defaults overridden by
    /// `[admission.answers]`.
    pub answers: RefusalAnswers,
    /// `[media]`, resolved.
    pub media: MediaSettings,
    /// `[tls]`, loaded: the server configuration of `wss://` listeners.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Overrides that come from the environment or the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// State directory (systemd's `STATE_DIRECTORY`, or `--state-dir`).
    pub state_dir: Option<PathBuf>,
    /// Database URL (`--database-url` / `TRUNKGATE_DATABASE_URL`).
    pub database_url: Option<String>,
}

/// Reads and validates the configuration at `path` and the trunk files it names.
///
/// Returns every error found, each with file, line and column.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Loaded, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors::one(ConfigError::io(path, e)))?;
    let config: Config = match toml::from_str(&text) {
        Ok(c) => c,
        Err(e) => return Err(ConfigErrors::one(ConfigError::from_toml(path, &text, &e))),
    };
    let sources = SourceMap::default().with(path, &text);
    let mut sources = sources;

    let mut trunks: Vec<LoadedTrunk> = config
        .trunk
        .iter()
        .cloned()
        .map(|trunk| LoadedTrunk { trunk, file: path.to_owned(), sources: Vec::new(), outbound: None })
        .collect();

    let base = path.parent().unwrap_or(Path::new("."));
    let (trunks_dir, explicit) = match &config.trunks_dir {
        Some(d) => (base.join(d), true),
        None => (base.join("trunks.d"), false),
    };
    match std::fs::read_dir(&trunks_dir) {
        Ok(entries) => {
            let mut files: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            for file in files {
                match std::fs::read_to_string(&file) {
                    Err(e) => errors.push(ConfigError::io(&file, e)),
                    Ok(text) => match toml::from_str::<TrunkFile>(&text) {
                        Err(e) => errors.push(ConfigError::from_toml(&file, &text, &e)),
                        Ok(tf) => {
                            trunks.extend(tf.trunk.into_iter().map(|trunk| LoadedTrunk {
                                trunk,
                                file: file.clone(),
                                sources: Vec::new(),
                                outbound: None,
                            }));
                            sources = sources.with(&file, &text);
                        }
                    },
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {}
        Err(e) => errors.push(ConfigError::io(&trunks_dir, e)),
    }

    let listen = parse_listen(&config, path, &sources, &mut errors);
    let answers = parse_answers(&config, path, &sources, &mut errors);
    let media = parse_media(&config, path, &sources, &mut errors);
    let tls = parse_tls(&config, path, &sources, &mut errors);
    parse_sources(&mut trunks, &sources, &mut errors);
    parse_outbound(&mut trunks, &sources, &mut errors);
    validate(&config, &trunks, path, &sources, &mut errors);

    let node_id = match &config.node_id {
        Some(n) => n.get_ref().clone(),
        None => hostname(),
    };
    let state_dir = overrides
        .state_dir
        .clone()
        .or_else(|| config.state_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let database_url = match (&overrides.database_url, &config.database.url) {
        (Some(u), _) => u.clone(),
        (None, Some(u)) => u.get_ref().clone(),
        (None, None) => format!("sqlite://{}", state_dir.join("trunkgate.db").display()),
    };
    if let Some(url) = &config.database.url
        && overrides.database_url.is_none()
        && !(url.get_ref().starts_with("sqlite:")
            || url.get_ref().starts_with("postgres://")
            || url.get_ref().starts_with("postgresql://"))
    {
        errors.push(sources.error(
            path,
            url.span(),
            format!("database.url `{}`: expected sqlite://PATH or postgres://…", url.get_ref()),
        ));
    }

    if errors.is_empty() {
        Ok(Loaded {
            path: path.to_owned(),
            config,
            trunks,
            node_id,
            state_dir,
            database_url,
            listen,
            answers,
            media,
            tls,
        })
    } else {
        Err(errors)
    }
}

/// A file of `trunks_dir`: only trunks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrunkFile {
    #[serde(default)]
    trunk: Vec<TrunkConfig>,
}

fn parse_listen(config: &Config, main: &Path, sources: &SourceMap, errors: &mut ConfigErrors) -> Vec<ListenAddr> {
    let mut out = Vec::new();
    for l in &config.sip.listen {
        match l.get_ref().parse::<ListenAddr>() {
            Ok(a) if out.contains(&a) => {
                errors.push(sources.error(main, l.span(), format!("listen address `{a}` is given twice")));
            }
            Ok(a) => out.push(a),
            Err(e) => errors.push(sources.error(main, l.span(), e)),
        }
    }
    out
}

/// Loads `[tls]` when given; `wss://` listeners need it.
fn parse_tls(
    config: &Config,
    main: &Path,
    sources: &SourceMap,
    errors: &mut ConfigErrors,
) -> Option<Arc<rustls::ServerConfig>> {
    let Some(tls) = &config.tls else {
        let wss = |s: &Spanned<String>| {
            s.get_ref().parse::<ListenAddr>().ok().filter(|l| l.transport == crate::transport::Transport::Wss)
        };
        if let Some((l, spanned)) = config.sip.listen.iter().find_map(|s| wss(s).map(|l| (l, s))) {
            errors.push(sources.error(
                main,
                spanned.span(),
                format!("listen address `{l}` needs a certificate: add [tls] certificate and private_key"),
            ));
        }
        return None;
    };
    let base = main.parent().unwrap_or(Path::new("."));
    let cert = base.join(tls.certificate.get_ref());
    let key = base.join(tls.private_key.get_ref());
    for (path, spanned) in [(&cert, &tls.certificate), (&key, &tls.private_key)] {
        if let Err(e) = std::fs::metadata(path) {
            errors.push(sources.error(main, spanned.span(), format!("{}: {e}", path.display())));
            return None;
        }
    }
    match crate::transport::tls_config(&cert, &key) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            errors.push(sources.error(main, tls.certificate.span(), format!("[tls]: {e}")));
            None
        }
    }
}

fn parse_answers(config: &Config, main: &Path, sources: &SourceMap, errors: &mut ConfigErrors) -> RefusalAnswers {
    let mut answers = RefusalAnswers::default();
    for (reason, status) in config.admission.answers.entries() {
        let Some(status) = status else { continue };
        match answers.with_status(reason, *status.get_ref()) {
            Ok(a) => answers = a,
            Err(e) => errors.push(sources.error(
                main,
                status.span(),
                format!("[admission.answers] {}: {e}", reason.as_str().replace('-', "_")),
            )),
        }
    }
    answers
}

fn parse_sources(trunks: &mut [LoadedTrunk], sources: &SourceMap, errors: &mut ConfigErrors) {
    for lt in trunks {
        let mut parsed = Vec::new();
        for s in &lt.trunk.sources {
            match s.get_ref().parse::<SourceNet>() {
                Ok(n) => parsed.push(n),
                Err(e) => errors.push(sources.error(&lt.file, s.span(), e)),
            }
        }
        lt.sources = parsed;
    }
}

fn validate(config: &Config, trunks: &[LoadedTrunk], main: &Path, sources: &SourceMap, errors: &mut ConfigErrors) {
    if let Some(n) = &config.node_id
        && !is_token(n.get_ref(), 64)
    {
        errors.push(sources.error(
            main,
            n.span(),
            "node_id must be 1 to 64 characters of letters, digits, `.`, `_` and `-`".to_owned(),
        ));
    }
    let sip = &config.sip;
    if sip.listen.is_empty() {
        errors.push(sources.key_error(main, "listen", "[sip] listen must name at least one socket"));
    }
    if !(1..=3600).contains(&sip.ws_ping_interval_s) {
        errors.push(sources.key_error(
            main,
            "ws_ping_interval_s",
            "[sip] ws_ping_interval_s must be between 1 and 3600",
        ));
    }
    if !(1024..=1024 * 1024).contains(&sip.max_message_bytes) {
        errors.push(sources.key_error(
            main,
            "max_message_bytes",
            "[sip] max_message_bytes must be between 1024 and 1048576",
        ));
    }
    if sip.t1_ms == 0 || sip.t1_ms > 60_000 {
        errors.push(sources.key_error(main, "t1_ms", "[sip] t1_ms must be between 1 and 60000"));
    }
    if sip.t2_ms < sip.t1_ms || sip.t2_ms > 600_000 {
        errors.push(sources.key_error(main, "t2_ms", "[sip] t2_ms must be at least t1_ms and at most 600000"));
    }
    if sip.min_se_s < 90 || sip.min_se_s > 86_400 {
        errors.push(sources.key_error(main, "min_se_s", "[sip] min_se_s must be between 90 and 86400 (RFC 4028)"));
    } else if sip.session_expires_s < sip.min_se_s || sip.session_expires_s > 86_400 {
        errors.push(sources.key_error(
            main,
            "session_expires_s",
            "[sip] session_expires_s must be at least min_se_s and at most 86400",
        ));
    }
    if sip.t4_ms == 0 || sip.t4_ms > 600_000 {
        errors.push(sources.key_error(main, "t4_ms", "[sip] t4_ms must be between 1 and 600000"));
    }
    // Past T1 (500 ms) the PBX has retransmitted the INVITE it waits on.
    if sip.overload_queue_ms > 10_000 {
        errors.push(sources.key_error(
            main,
            "overload_queue_ms",
            "[sip] overload_queue_ms must be at most 10000 (0 turns overload shedding off)",
        ));
    }

    if sip.send_thread_busy_pct > 100 {
        errors.push(sources.key_error(
            main,
            "send_thread_busy_pct",
            "[sip] send_thread_busy_pct must be at most 100 (100 = never hand sends over, 0 = always)",
        ));
    }

    let reg = &config.registrar;
    if reg.min_expires_s == 0 || reg.min_expires_s > reg.max_expires_s {
        errors.push(sources.key_error(
            main,
            "min_expires_s",
            "[registrar] min_expires_s must be between 1 and max_expires_s",
        ));
    }
    if !(reg.min_expires_s..=reg.max_expires_s).contains(&reg.default_expires_s) {
        errors.push(sources.key_error(
            main,
            "default_expires_s",
            "[registrar] default_expires_s must be between min_expires_s and max_expires_s",
        ));
    }
    if reg.max_contacts_per_user == 0 {
        errors.push(sources.key_error(
            main,
            "max_contacts_per_user",
            "[registrar] max_contacts_per_user must be at least 1",
        ));
    }
    let auth = &config.auth;
    if auth.algorithms.is_empty() {
        errors.push(sources.key_error(main, "algorithms", "[auth] algorithms must name at least one of SHA-256, MD5"));
    }
    for a in &auth.algorithms {
        if crate::sip::digest::Algorithm::from_token(Some(a.get_ref())).is_none() {
            errors.push(sources.error(
                main,
                a.span(),
                format!("[auth] unknown digest algorithm `{}` (SHA-256 or MD5)", a.get_ref()),
            ));
        }
    }
    if auth.nonce_lifetime_s == 0 || auth.max_failures == 0 || auth.failure_window_s == 0 {
        errors.push(sources.key_error(
            main,
            "nonce_lifetime_s",
            "[auth] nonce_lifetime_s, max_failures and failure_window_s must be at least 1",
        ));
    }

    let mut names: HashMap<&str, (&Path, std::ops::Range<usize>)> = HashMap::new();
    for lt in trunks {
        let t = &lt.trunk;
        let file = lt.file.as_path();
        let name = t.name.get_ref().as_str();
        if !is_token(name, 64) {
            errors.push(sources.error(
                file,
                t.name.span(),
                format!("trunk name `{name}` must be 1 to 64 characters of letters, digits, `.`, `_` and `-`"),
            ));
        }
        if let Some((first_file, first_span)) = names.get(name) {
            let first = sources.location(first_file, first_span.clone());
            errors.push(sources.error(
                file,
                t.name.span(),
                format!("duplicate trunk name `{name}` (first defined at {first})"),
            ));
        } else {
            names.insert(name, (file, t.name.span()));
        }
        if t.portal.get_ref() != "*" && !is_token(t.portal.get_ref(), 128) {
            errors.push(sources.error(
                file,
                t.portal.span(),
                "portal id must be 1 to 128 characters of letters, digits, `.`, `_` and `-`".to_owned(),
            ));
        }
        let registers = t.outbound.as_ref().is_some_and(|o| o.register);
        if t.sources.is_empty() && !registers {
            errors.push(sources.error(
                file,
                t.name.span(),
                format!("trunk `{name}` has no sources (only a trunk with register = true may have none)"),
            ));
        }
        let mut numbers: HashMap<&str, std::ops::Range<usize>> = HashMap::new();
        for r in &t.route {
            let number = r.number.get_ref().as_str();
            if !(number == "*" || is_dialled_number(number)) {
                errors.push(sources.error(
                    file,
                    r.number.span(),
                    format!(
                        "route number `{number}` must be `*` or digits with an optional leading `+` (and `*`, `#`)"
                    ),
                ));
            }
            if numbers.insert(number, r.number.span()).is_some() {
                errors.push(sources.error(
                    file,
                    r.number.span(),
                    format!("duplicate route for number `{number}` in trunk `{name}`"),
                ));
            }
            if r.users.is_empty() {
                errors.push(sources.error(file, r.number.span(), format!("route `{number}` names no users")));
            }
            for u in &r.users {
                if !is_token(u.get_ref(), 64) {
                    errors.push(sources.error(
                        file,
                        u.span(),
                        format!("user name `{}` is not a valid username", u.get_ref()),
                    ));
                }
            }
            if !(1..=3600).contains(&r.ring_timeout_s) {
                errors.push(sources.error(
                    file,
                    r.number.span(),
                    format!("route `{number}`: ring_timeout_s must be 1..=3600"),
                ));
            }
        }
    }
    // Two trunks with overlapping sources would make the trunk of a call
    // depend on table order: refuse it rather than guess.
    for (i, a) in trunks.iter().enumerate() {
        for b in trunks.iter().skip(i + 1) {
            for na in &a.sources {
                for (nb, sb) in b.sources.iter().zip(&b.trunk.sources) {
                    if na.0.contains(&nb.0.network()) || nb.0.contains(&na.0.network()) {
                        errors.push(sources.error(
                            &b.file,
                            sb.span(),
                            format!(
                                "source {} of trunk `{}` overlaps source {} of trunk `{}`",
                                nb.0,
                                b.trunk.name.get_ref(),
                                na.0,
                                a.trunk.name.get_ref()
                            ),
                        ));
                    }
                }
            }
        }
    }
}

/// Resolves each `[trunk.outbound]`: target, credentials, number rules.
fn parse_outbound(trunks: &mut [LoadedTrunk], sources: &SourceMap, errors: &mut ConfigErrors) {
    for lt in trunks {
        let Some(o) = &lt.trunk.outbound else { continue };
        let file = lt.file.clone();
        let mut err = |span: std::ops::Range<usize>, msg: String| errors.push(sources.error(&file, span, msg));
        let name = lt.trunk.name.get_ref();
        let (transport, host, port, addr) = match resolve_target(o.target.get_ref()) {
            Ok(t) => t,
            Err(e) => {
                err(o.target.span(), format!("outbound target {e}"));
                continue;
            }
        };
        if !(1..=300).contains(&o.invite_timeout_s) {
            err(o.target.span(), format!("trunk `{name}`: outbound invite_timeout_s must be 1..=300"));
        }
        if !(1..=3600).contains(&o.answer_timeout_s) {
            err(o.target.span(), format!("trunk `{name}`: outbound answer_timeout_s must be 1..=3600"));
        }
        let password = match (&o.password, &o.password_file) {
            (Some(p), None) => Some(p.get_ref().clone()),
            (None, Some(f)) => {
                let path = lt.file.parent().unwrap_or(Path::new(".")).join(f.get_ref());
                match std::fs::read_to_string(&path) {
                    Ok(t) => match t.lines().next().map(str::trim_end).filter(|l| !l.is_empty()) {
                        Some(l) => Some(l.to_owned()),
                        None => {
                            err(f.span(), format!("password_file {}: empty", path.display()));
                            None
                        }
                    },
                    Err(e) => {
                        err(f.span(), format!("password_file {}: {e}", path.display()));
                        None
                    }
                }
            }
            (Some(p), Some(_)) => {
                err(p.span(), "give password or password_file, not both".to_owned());
                None
            }
            (None, None) => None,
        };
        let credentials = match (&o.username, password) {
            (Some(u), Some(p)) => Some((u.get_ref().clone(), p)),
            (Some(u), None) => {
                err(u.span(), format!("trunk `{name}`: outbound username without password or password_file"));
                None
            }
            (None, Some(_)) => {
                err(o.target.span(), format!("trunk `{name}`: outbound password without username"));
                None
            }
            (None, None) => None,
        };
        for s in [&o.caller_number, &o.strip_prefix, &o.add_prefix].into_iter().flatten() {
            if !is_dialled_number(s.get_ref()) {
                err(s.span(), format!("`{}` must be digits with an optional leading `+`", s.get_ref()));
            }
        }
        match (&o.country_code, o.number_format) {
            (Some(c), _)
                if !(1..=3).contains(&c.get_ref().len()) || !c.get_ref().bytes().all(|b| b.is_ascii_digit()) =>
            {
                err(c.span(), format!("country_code `{}` must be 1 to 3 digits, without `+`", c.get_ref()));
            }
            (None, NumberFormat::E164 | NumberFormat::National) => {
                err(o.target.span(), format!("trunk `{name}`: number_format needs country_code"));
            }
            _ => {}
        }
        if !o.national_prefix.bytes().all(|b| b.is_ascii_digit())
            || o.international_prefix.is_empty()
            || !o.international_prefix.bytes().all(|b| b.is_ascii_digit())
        {
            err(o.target.span(), format!("trunk `{name}`: national_prefix and international_prefix must be digits"));
        }
        if o.caller_id.is_empty() {
            err(o.target.span(), format!("trunk `{name}`: caller_id must name at least one of from, pai, rpid"));
        }
        let registration = if o.register {
            let r = match &o.registrar {
                Some(r) => resolve_target(r.get_ref()).map_err(|e| err(r.span(), format!("registrar {e}"))).ok(),
                None => Some((transport, host.clone(), port, addr)),
            };
            let account =
                o.account.as_ref().map(|a| a.get_ref().clone()).or_else(|| credentials.as_ref().map(|c| c.0.clone()));
            if account.is_none() {
                err(o.target.span(), format!("trunk `{name}`: register = true needs account or username"));
            }
            let contact_user = o.contact_user.as_ref().map_or_else(|| format!("tg-{name}"), |c| c.get_ref().clone());
            if !is_token(&contact_user, 64) {
                err(o.target.span(), format!("trunk `{name}`: contact_user must be letters, digits, `.`, `_`, `-`"));
            }
            if !(60..=86_400).contains(&o.register_expires_s) {
                err(o.target.span(), format!("trunk `{name}`: register_expires_s must be 60..=86400"));
            }
            match (r, account) {
                (Some((rt, rh, rp, ra)), Some(account)) => {
                    let domain = o.domain.as_ref().map_or_else(|| rh.clone(), |d| d.get_ref().clone());
                    Some(LoadedRegistration {
                        transport: rt,
                        host: rh,
                        port: rp,
                        addr: ra,
                        aor: format!("sip:{account}@{domain}"),
                        contact_user,
                        expires: std::time::Duration::from_secs(u64::from(o.register_expires_s)),
                        retry: std::time::Duration::from_secs(u64::from(o.register_retry_s.max(1))),
                    })
                }
                _ => None,
            }
        } else {
            None
        };
        if o.options_interval_s > 86_400 {
            err(o.target.span(), format!("trunk `{name}`: options_interval_s must be 0..=86400"));
        }
        let proxy = o
            .outbound_proxy
            .as_ref()
            .and_then(|p| resolve_target(p.get_ref()).map_err(|e| err(p.span(), format!("outbound_proxy {e}"))).ok());
        lt.outbound = Some(LoadedOutbound { transport, host, port, addr, credentials, registration, proxy });
    }
}

/// `udp://HOST[:PORT]` or `tcp://…`, resolved: (transport, host, port,
/// address); the error says what is wrong with `target`.
fn resolve_target(target: &str) -> Result<(crate::transport::Transport, String, u16, std::net::SocketAddr), String> {
    use crate::transport::Transport as T;
    let (transport, rest) = match target.split_once("://") {
        Some(("udp", r)) => (T::Udp, r),
        Some(("tcp", r)) => (T::Tcp, r),
        _ => return Err(format!("`{target}`: expected udp://HOST[:PORT] or tcp://HOST[:PORT]")),
    };
    let (host, port) = split_host_port(rest).ok_or_else(|| format!("`{target}`: bad host or port"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(bare, port))
        .map_err(|e| format!("`{target}`: `{host}` does not resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("`{target}`: `{host}` has no address"))?;
    Ok((transport, host.to_owned(), port, addr))
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` (default port 5060).
fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let s = s.trim_end_matches('/');
    if s.is_empty() {
        return None;
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if tail.is_empty() => 5060,
            None => return None,
        };
        return Some((&s[..h.len() + 2], port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.contains(':') => Some((h, p.parse().ok().filter(|p| *p != 0)?)),
        Some(_) => None,
        None => Some((s, 5060)),
    }
}

/// Letters, digits, `.`, `_`, `-`; 1..=max characters.
pub fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Digits with an optional leading `+` (and `*`, `#`), 1 to 32.
pub fn is_dialled_number(s: &str) -> bool {
    let digits = s.strip_prefix('+').unwrap_or(s);
    !digits.is_empty() && digits.len() <= 32 && digits.bytes().all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "trunkgate".to_owned())
}

/// File texts kept to turn byte spans into line/column.
#[derive(Debug, Default)]
struct SourceMap {
    files: Vec<(PathBuf, String)>,
}

impl SourceMap {
    fn with(mut self, path: &Path, text: &str) -> Self {
        self.files.push((path.to_owned(), text.to_owned()));
        self
    }

    fn location(&self, path: &Path, span: std::ops::Range<usize>) -> Location {
        let text = self.files.iter().find(|(p, _)| p == path).map(|(_, t)| t.as_str()).unwrap_or("");
        Location::from_offset(path, text, span.start)
    }

    /// An error about `key`, placed on the line that sets it (or on the file
    /// when the key is absent and a default was at fault).
    fn key_error(&self, path: &Path, key: &str, message: &str) -> ConfigError {
        let text = self.files.iter().find(|(p, _)| p == path).map(|(_, t)| t.as_str()).unwrap_or("");
        match Location::of_key(path, text, key) {
            Some(loc) => ConfigError::at(loc, message.to_owned()),
            None => ConfigError::plain(path, message),
        }
    }

    fn error(&self, path: &Path, span: std::ops::Range<usize>, message: String) -> ConfigError {
        ConfigError::at(self.location(path, span), message)
    }
}

#[cfg(test)]
mod tests;
