//! The generator's two clocks, read with `clock_gettime` directly.
//!
//! - Monotonic: scheduling (when a packet is due, timers of the signalling).
//! - Realtime: the send time carried in each packet and the receive time,
//!   because the kernel's receive timestamps (`SO_TIMESTAMPNS`) are realtime;
//!   both ends are this process, so the two readings share one clock.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Nanoseconds of `CLOCK_MONOTONIC`.
pub fn mono_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// Nanoseconds of `CLOCK_REALTIME` since the epoch.
pub fn real_ns() -> u64 {
    read(libc::CLOCK_REALTIME)
}

fn read(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; both clock ids exist on Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    timespec_ns(&ts)
}

/// Sleeps until monotonic `at_ns` (returns at once if it has passed).
pub fn sleep_until(at_ns: u64) {
    let ts = libc::timespec { tv_sec: (at_ns / SEC) as libc::time_t, tv_nsec: (at_ns % SEC) as libc::c_long };
    // SAFETY: `ts` is a valid timespec; the remaining time is not asked for
    // (TIMER_ABSTIME: an interrupted sleep is simply shorter).
    unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &ts, std::ptr::null_mut()) };
}

/// A timespec as nanoseconds (negative fields count as zero).
pub fn timespec_ns(ts: &libc::timespec) -> u64 {
    let s = u64::try_from(ts.tv_sec).unwrap_or(0);
    let ns = u64::try_from(ts.tv_nsec).unwrap_or(0);
    s.saturating_mul(1_000_000_000).saturating_add(ns)
}

/// `CLOCK_MONOTONIC` ns as the [`Instant`] str0m takes (both read the
/// same clock on Linux; the pair is anchored once per process).
pub fn instant_at(mono: u64) -> Instant {
    let (i0, m0) = *ANCHOR.get_or_init(anchor);
    if mono >= m0 { i0 + Duration::from_nanos(mono - m0) } else { i0 - Duration::from_nanos(m0 - mono) }
}

/// An [`Instant`] of str0m's as `CLOCK_MONOTONIC` ns.
pub fn mono_of(at: Instant) -> u64 {
    let (i0, m0) = *ANCHOR.get_or_init(anchor);
    match at.checked_duration_since(i0) {
        Some(d) => m0.saturating_add(d.as_nanos() as u64),
        None => m0.saturating_sub(i0.duration_since(at).as_nanos() as u64),
    }
}

static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();

#[allow(clippy::disallowed_methods)]
fn anchor() -> (Instant, u64) {
    (Instant::now(), mono_ns())
}

/// One millisecond, in nanoseconds.
pub const MS: u64 = 1_000_000;
/// One second, in nanoseconds.
pub const SEC: u64 = 1_000_000_000;
