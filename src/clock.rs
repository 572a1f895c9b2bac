//! The one place that reads the wall clock. Everything else takes `now` as an
//! argument, so the licence rules and protocol timers are tested in virtual time.

use chrono::{DateTime, Utc};

/// The current UTC time, truncated to whole seconds (the database stores seconds,
/// and the licence rules are defined to the second).
#[allow(clippy::disallowed_methods)]
pub fn now_utc() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now)
}

/// A monotonic instant for protocol timers.
#[allow(clippy::disallowed_methods)]
pub fn instant() -> std::time::Instant {
    std::time::Instant::now()
}

/// The wall clock and the monotonic clock read together, to turn wall-clock
/// timestamps (the kernel's receive stamps) into instants.
#[derive(Debug, Clone, Copy)]
pub struct WallToInstant {
    wall: std::time::SystemTime,
    mono: std::time::Instant,
}

impl WallToInstant {
    /// Reads both clocks.
    #[allow(clippy::disallowed_methods)]
    pub fn read() -> Self {
        Self { mono: std::time::Instant::now(), wall: std::time::SystemTime::now() }
    }

    /// The instant at which the wall clock read `at`; the reading's own
    /// instant if `at` is later (the wall clock stepped back).
    pub fn instant_of(&self, at: std::time::SystemTime) -> std::time::Instant {
        let ago = self.wall.duration_since(at).unwrap_or_default();
        self.mono.checked_sub(ago).unwrap_or(self.mono)
    }
}
