//! Mirror of the daemon's `sip` module holding only `message`.

#[path = "../../../src/sip/message/mod.rs"]
pub mod message;
