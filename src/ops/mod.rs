//! Operations: logging, systemd integration and signals.

pub mod logging;
pub mod metrics;
pub mod systemd;
