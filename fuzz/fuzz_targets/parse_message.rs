//! One datagram: parse, then every accessor, check and a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trunkgate_fuzz::sip::message::parse;
use trunkgate_fuzz::{answer_error, exercise};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(msg) => exercise(&msg),
        Err(e) => answer_error(&e),
    }
});
