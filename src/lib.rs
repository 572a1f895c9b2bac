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
//! - [`ops`]: logging, systemd notifications, metric names.
//! - [`sip`]: sans-IO SIP: messages, transactions (RFC 3261 §17, RFC 6026), dialogs (§12), digest.
//! - [`transport`]: UDP and TCP sockets (tokio).
//! - [`registrar`]: the location table of portal users.
//! - [`b2bua`]: trunk identification and routing; each call as a sans-IO machine
//!   (legs, forking, offer/answer, timers) and the media seam its SDP crosses.
//! - [`media`]: media anchored on trunkgate: the port pool and the RTP relay's sans-IO core.
//! - [`licences`]: the in-memory licence cache, kept fresh from the database.
//! - [`node`]: the SIP driver: OPTIONS, REGISTER, admission, and the calls' I/O.
//! - [`cdr`]: call records, written in batches.
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
pub mod media;
pub mod node;
pub mod ops;
pub mod registrar;
pub mod sip;
pub mod store;
pub mod transport;
