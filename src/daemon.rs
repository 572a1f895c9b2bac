//! The `run` command: opens the database, serves, and stops cleanly on
//! SIGTERM or SIGINT.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use std::sync::Arc;
use std::time::Duration;

use crate::b2bua::TrunkTable;
use crate::cdr::CdrWriter;
use crate::config::Loaded;
use crate::licences::LicenceCache;
use crate::node::channels::Channels;
use crate::node::{LockoutConfig, Node, NodeConfig};
use crate::ops::systemd;
use crate::registrar::RegistrarConfig;
use crate::sip::digest::{Algorithm, DigestConfig};
use crate::sip::transaction::TimerConfig;
use crate::store::{Store, redact_url};
use crate::transport::{TransportConfig, Transports};

/// Runs the daemon until a stop signal; returns once everything is closed.
pub async fn run(loaded: Loaded) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    spawn_signal_listener(shutdown.clone())?;

    let store = Store::connect(&loaded.database_url, &loaded.config.database).await?;
    // One daemon per SQLite file: it counts the channels in memory, so a
    // second daemon on the same file would admit past the licence.
    let _sqlite_lock = match sqlite_path(&loaded.database_url) {
        Some(db) => Some(lock_sqlite(&db)?),
        None => None,
    };
    let portals = store.portals().await?;
    let live = portals.iter().filter(|p| p.status != "deleted").count();
    info!(
        node_id = %loaded.node_id,
        database = %redact_url(&loaded.database_url),
        backend = store.kind().as_str(),
        portals = live,
        trunks = loaded.trunks.len(),
        "database open, migrations applied"
    );
    for t in &loaded.trunks {
        let portal = t.trunk.portal.get_ref();
        if portal == "*" {
            info!(trunk = %t.trunk.name.get_ref(), "shared trunk: calls belong to the portal of the Request-URI domain");
            continue;
        }
        match portals.iter().find(|p| &p.id == portal) {
            None => {
                warn!(trunk = %t.trunk.name.get_ref(), portal = %portal, "trunk names a portal that is not in the database: its calls will be refused")
            }
            Some(p) => info!(trunk = %t.trunk.name.get_ref(), portal = %portal, status = %p.status, "trunk"),
        }
    }
    let cache = LicenceCache::load(&store).await?;
    tokio::spawn(cache.clone().run_refresher(
        store.clone(),
        loaded.database_url.clone(),
        Duration::from_millis(250),
        shutdown.clone(),
    ));

    let sip = &loaded.config.sip;
    let transport_config = TransportConfig {
        max_message_bytes: sip.max_message_bytes,
        max_tcp_connections: sip.max_tcp_connections,
        tcp_idle_timeout: Duration::from_secs(sip.tcp_idle_timeout_s),
        ws_ping_interval: Duration::from_secs(sip.ws_ping_interval_s.max(1)),
        tls: loaded.tls.clone(),
        ..TransportConfig::default()
    };
    // Messages are spread over the SIP cores by Call-ID.
    let shards = sip.resolved_cores();
    let (inbound_tx, inbound_rx): (Vec<_>, Vec<_>) = (0..shards).map(|_| tokio::sync::mpsc::channel(16_384)).unzip();
    let transports = Transports::bind(&loaded.listen, transport_config, inbound_tx, shutdown.clone()).await?;
    for b in transports.bound() {
        // Tests and operators read the real ports (port 0) from this line.
        info!(transport = b.transport.as_str(), addr = %b.addr, "listening");
    }
    info!(cores = shards, "SIP cores");
    // Calls of an earlier run of this node are gone: free their channels.
    match store.release_node_leases(&loaded.node_id).await {
        Ok(0) => {}
        Ok(n) => warn!(leases = n, "released the leases of this node's previous run"),
        Err(e) => warn!(error = %e, "could not release this node's old leases; they will expire"),
    }
    match store.release_node_allowances(&loaded.node_id).await {
        Ok(0) => {}
        Ok(n) => warn!(allowances = n, "released the channel allowances of this node's previous run"),
        Err(e) => warn!(error = %e, "could not release this node's old channel allowances; they will expire"),
    }
    let channels = Arc::new(Channels::for_store(&store, &loaded.node_id, crate::node::LEASE_TTL));
    tokio::spawn(channels.clone().listen_for_asks(loaded.database_url.clone(), shutdown.clone()));
    tokio::spawn(channels.clone().watch_database(shutdown.clone()));
    tokio::spawn(renew_leases(store.clone(), channels.clone(), loaded.node_id.clone(), shutdown.clone()));
    // Call records are written in batches by their own task, which flushes
    // everything before the daemon exits.
    let cdr_shutdown = CancellationToken::new();
    let (cdr, cdr_task) = CdrWriter::start(store.clone(), cdr_shutdown.clone());
    let mut trunks = TrunkTable::new(&loaded.trunks);
    // Trunk credentials kept in the database (`trunk set-credentials`) for
    // trunks whose file names none.
    match store.trunk_credentials().await {
        Ok(stored) => {
            for name in trunks.use_stored_credentials(&stored) {
                info!(trunk = %name, "trunk credentials from the database");
            }
        }
        Err(e) => warn!(error = %e, "trunk credentials not read from the database"),
    }
    let mut config = node_config(&loaded);
    if loaded.media.anchor {
        raise_open_files_limit();
        let m = &loaded.media;
        let engine = crate::media::engine::MediaEngine::start(m.clone())?;
        let webrtc = |f| {
            let ports = engine.webrtc_ports(f);
            if ports.is_empty() {
                "-".to_owned()
            } else {
                ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
            }
        };
        info!(
            ports = format!("{}-{}", m.port_min, m.port_max),
            threads = m.threads,
            public_v4 = ?m.public_v4,
            public_v6 = ?m.public_v6,
            webrtc_v4 = webrtc(crate::media::engine::Family::V4),
            webrtc_v6 = webrtc(crate::media::engine::Family::V6),
            "media relay started"
        );
        config.media = Some(engine);
    } else {
        info!("media not anchored ([media] anchor = false): SDP passes unchanged");
        if loaded.media.browsers {
            warn!("browsers cannot take calls without [media] anchor = true: their offers would be refused");
        }
    }
    let node =
        Node::start(config, store.clone(), channels, cache, trunks, cdr, transports, inbound_rx, shutdown.clone())?;

    systemd::ready("serving");
    info!("ready");

    shutdown.cancelled().await;
    systemd::stopping();
    info!(registrations = node.registrations(), "stopping");
    // Calls still up end with BYE and leave their records before the
    // record writer's last flush.
    node.stopped().await;
    // Calls still up end with this process: give their channels back now
    // rather than when the leases expire.
    match store.release_node_leases(&loaded.node_id).await {
        Ok(0) => {}
        Ok(n) => info!(leases = n, "released the leases of calls cut by the stop"),
        Err(e) => warn!(error = %e, "leases not released; they will expire"),
    }
    if let Err(e) = store.release_node_allowances(&loaded.node_id).await {
        warn!(error = %e, "channel allowances not released; they will expire");
    }
    cdr_shutdown.cancel();
    if cdr_task.await.is_err() {
        warn!("call record writer ended abnormally");
    }
    store.close().await;
    info!("stopped");
    Ok(())
}

/// The file of a `sqlite://` URL.
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).map(std::path::PathBuf::from)
}

/// Takes `<db>.daemon.lock` for this process (released when it exits,
/// however it exits); fails when another daemon holds it.
fn lock_sqlite(db: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let mut name = db.as_os_str().to_owned();
    name.push(".daemon.lock");
    let path = std::path::PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow::anyhow!(
            "another trunkgate daemon uses {} (a SQLite database serves one node; share PostgreSQL for a fleet)",
            db.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(anyhow::anyhow!("cannot lock {}: {e}", path.display())),
    }
}

/// Renews this node's call leases and channel allowances every third of
/// their lifetime, so the channels of a node that dies come back when they
/// expire.
async fn renew_leases(store: Store, channels: Arc<Channels>, node_id: String, shutdown: CancellationToken) {
    let ttl = crate::node::LEASE_TTL;
    let mut tick = tokio::time::interval(ttl / 3);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = crate::clock::now_utc();
        let until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::seconds(60));
        if let Err(e) = store.renew_leases(&node_id, until).await {
            warn!(error = %e, "lease renewal failed");
        }
        if let Err(e) = channels.renew(now, until).await {
            warn!(error = %e, "channel allowance renewal failed");
        }
    }
}

/// Cancels `token` on the first SIGTERM or SIGINT.
fn spawn_signal_listener(token: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!(signal = "SIGTERM", "stop requested"),
            _ = int.recv() => info!(signal = "SIGINT", "stop requested"),
        }
        token.cancel();
    });
    Ok(())
}

/// Media takes four sockets per call: the soft open-files limit (often
/// 1024) goes up to the hard one, as servers of many sockets do.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "open files limit raised"),
            Err(e) => warn!(error = %e, "open files limit not raised"),
        }
    }
}

/// The node's settings from the configuration.
fn node_config(loaded: &Loaded) -> NodeConfig {
    let c = &loaded.config;
    NodeConfig {
        node_id: loaded.node_id.clone(),
        warning_host: c.sip.warning_host.clone().unwrap_or_else(|| loaded.node_id.clone()),
        timers: TimerConfig {
            t1: Duration::from_millis(c.sip.t1_ms),
            t2: Duration::from_millis(c.sip.t2_ms),
            t4: Duration::from_millis(c.sip.t4_ms),
            linger_grid: Some(crate::sip::transaction::Grid {
                origin: crate::clock::instant(),
                step: crate::sip::transaction::LINGER_GRID,
            }),
        },
        registrar: RegistrarConfig {
            min_expires: Duration::from_secs(c.registrar.min_expires_s),
            max_expires: Duration::from_secs(c.registrar.max_expires_s),
            default_expires: Duration::from_secs(c.registrar.default_expires_s),
            max_contacts: c.registrar.max_contacts_per_user,
        },
        digest: DigestConfig {
            // Validated by config::load.
            algorithms: c.auth.algorithms.iter().filter_map(|a| Algorithm::from_token(Some(a.get_ref()))).collect(),
            nonce_lifetime: Duration::from_secs(c.auth.nonce_lifetime_s),
            ..DigestConfig::default()
        },
        lockout: LockoutConfig {
            max_failures: c.auth.max_failures,
            window_s: c.auth.failure_window_s,
            lock_s: c.auth.lockout_s,
            ..LockoutConfig::default()
        },
        max_calls: c.sip.max_calls,
        overload_queue: Duration::from_millis(c.sip.overload_queue_ms),
        send_thread_busy_pct: c.sip.send_thread_busy_pct,
        ignore_unknown_trunks: c.sip.unknown_trunk == crate::config::UnknownTrunk::Ignore,
        answers: loaded.answers,
        session_expires: Duration::from_secs(c.sip.session_expires_s),
        min_se: Duration::from_secs(c.sip.min_se_s),
        media: None,
    }
}
