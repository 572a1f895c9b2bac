//! The `run` command: opens the database, serves, and stops cleanly on
//! SIGTERM or SIGINT.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Loaded;
use crate::ops::systemd;
use crate::store::{Store, redact_url};

/// Runs the daemon until a stop signal; returns once everything is closed.
pub async fn run(loaded: Loaded) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    spawn_signal_listener(shutdown.clone())?;

    let store = Store::connect(&loaded.database_url, &loaded.config.database).await?;
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
        match portals.iter().find(|p| &p.id == portal) {
            None => {
                warn!(trunk = %t.trunk.name.get_ref(), portal = %portal, "trunk names a portal that is not in the database: its calls will be refused")
            }
            Some(p) => info!(trunk = %t.trunk.name.get_ref(), portal = %portal, status = %p.status, "trunk"),
        }
    }
    systemd::ready("serving");
    info!("ready");

    shutdown.cancelled().await;
    systemd::stopping();
    info!("stopping");
    store.close().await;
    info!("stopped");
    Ok(())
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
