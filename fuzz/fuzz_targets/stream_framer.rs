//! A TCP byte stream cut at fuzzer-chosen places: the framer must give the
//! same events whatever the cut, stay within its limits and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trunkgate_fuzz::exercise;
use trunkgate_fuzz::sip::message::{FramingError, StreamEvent, StreamFramer, StreamFramerConfig};

fn config() -> StreamFramerConfig {
    StreamFramerConfig { max_message_size: 8 * 1024, max_buffered: 1024 * 1024, report_pongs: true }
}

/// Feeds `data` in chunks of `chunk` bytes; returns the events and the
/// final error, if any.
fn run(data: &[u8], chunk: usize) -> (Vec<StreamEvent>, Option<FramingError>) {
    let mut framer = StreamFramer::new(config());
    let mut events = Vec::new();
    for part in data.chunks(chunk.max(1)) {
        if let Err(e) = framer.handle_bytes(part) {
            return (events, Some(e));
        }
        loop {
            match framer.poll_event() {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => break,
                Err(e) => return (events, Some(e)),
            }
        }
        assert!(framer.buffered() <= config().max_buffered);
    }
    (events, None)
}

fuzz_target!(|input: &[u8]| {
    let Some((&cut, data)) = input.split_first() else {
        return;
    };
    let whole = run(data, data.len());
    let chunked = run(data, usize::from(cut % 64) + 1);
    assert_eq!(whole, chunked, "framing depends on how the bytes arrive");
    for ev in &whole.0 {
        if let StreamEvent::Message(m) = ev {
            exercise(m);
        }
    }
});
