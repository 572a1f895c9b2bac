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
