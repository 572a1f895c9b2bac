//! trunkgate: a SIP connector that admits PBX trunk calls into portals by
//! their licence, and bridges them to portal users.
//!
//! Map of the crate:
//! - [`admission`]: the licensing rules as pure functions over a snapshot and a clock.
//! - [`config`]: the TOML schema, validation with file:line:column errors.
//! - [`store`]: the shared database (SQLite or PostgreSQL), one code path for both.
//! - [`credentials`]: login and password rules, HA1 for SIP digest.
//! - [`cli`]: the command line (daemon and admin commands).
//! - [`daemon`]: the `run` command's lifecycle.
//! - [`ops`]: logging and systemd.
//! - [`sip`]: sans-IO SIP: transactions (RFC 3261 §17, RFC 6026).
//! - [`clock`]: the only place that reads the wall clock.

pub mod admission;
pub mod b2bua;
pub mod cdr;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod licences;
pub mod ops;
pub mod registrar;
pub mod service;
pub mod sip;
pub mod store;
pub mod transport;
