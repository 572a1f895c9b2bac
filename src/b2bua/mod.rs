//! The B2BUA's pure parts: which trunk a request comes from, which number it
//! dials, and where that number rings. The call state itself lives in the
//! SIP service (`crate::service::calls`).

mod trunks;

pub use trunks::{DialledNumber, Route, Trunk, TrunkTable, dialled_number};
