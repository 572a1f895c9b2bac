//! T1, T2, T4 and every timer of RFC 3261 §17 (table 4 of Appendix A),
//! with the RFC 6026 Timers L and M.
//!
//! Every duration the machines use is derived here from [`TimerConfig`], so
//! a test or an operator who changes T1 changes the whole schedule
//! consistently. Timer C (the proxy's INVITE timer, §16.6 item 11) is not
//! here: trunkgate is a B2BUA, whose UAC side runs its own ring timeout in
//! the TU.

use std::time::{Duration, Instant};

use super::{Reliability, TsxError};

/// How long a server INVITE waits for the TU before asking for a 100
/// Trying (§17.2.1: "unless it knows that the TU will generate a
/// provisional or final response within 200 ms").
///
/// Delayed rather than immediate: the admission decision usually answers
/// well within 200 ms (a 403/486/503 or a 180), which then goes out alone;
/// the client's first retransmission (Timer A, T1 = 500 ms) comes later, so
/// nothing is retransmitted for want of the 100. A retransmitted INVITE
/// asks for the 100 at once.
pub const TRYING_DELAY: Duration = Duration::from_millis(200);

/// The least Timer D on unreliable transports (§17.1.1.2: "at least 32
/// seconds"). It covers the server's Timer G retransmissions, which run on
/// the *server's* T1, unknown here: lowering our T1 must not shorten D.
pub const TIMER_D_MIN: Duration = Duration::from_secs(32);

/// The base timer values of RFC 3261 §17.1.1.1, table 4.
///
/// Defaults are the RFC's. Lower T1 only on networks known to have shorter
/// round trips; every other timer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    /// Round-trip estimate: first retransmission interval (A, E, G). Default
    /// 500 ms.
    pub t1: Duration,
    /// Cap on non-INVITE request and INVITE response retransmission
    /// intervals (E, G). Default 4 s.
    pub t2: Duration,
    /// How long a message may stay in the network (I, K). Default 5 s.
    pub t4: Duration,
    /// The grid to which the lingering timers (D, I, J, K, L, M: a
    /// finished transaction's wait for stray retransmissions, after which
    /// it is only forgotten) are rounded up; `None`, the default, keeps them
    /// exact. The daemon sets a 100 ms grid ([`LINGER_GRID`]): a node
    /// answering thousands of calls a second has thousands of these
    /// expiring each second, one per millisecond at worst, and each of its
    /// sleeps that one cuts short is a thread wake-up spent on bookkeeping.
    /// Rounded up, they share a wake-up ten times a second, and a
    /// transaction lingers at most that much longer than the RFC's minimum
    /// (as Kamailio's, whose wait timer runs on a coarse tick).
    /// Retransmission and timeout timers (A, B, E, F, G, H) stay exact.
    pub linger_grid: Option<Grid>,
}

impl Default for TimerConfig {
    fn default() -> TimerConfig {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            linger_grid: None,
        }
    }
}

/// The step of the daemon's [`TimerConfig::linger_grid`].
pub const LINGER_GRID: Duration = Duration::from_millis(100);

/// Instants `origin + k * step`: where rounded timers fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    /// Any fixed instant (the daemon's start): only the spacing matters.
    pub origin: Instant,
    /// The spacing; zero keeps instants as they are.
    pub step: Duration,
}

impl Grid {
    /// The first grid instant at or after `at` (`at` itself before the
    /// origin).
    pub fn round_up(&self, at: Instant) -> Instant {
        let step = self.step.as_nanos();
        let Some(since) = at.checked_duration_since(self.origin) else { return at };
        if step == 0 {
            return at;
        }
        let late = since.as_nanos() % step;
        if late == 0 {
            return at;
        }
        // Below the step, so it fits.
        at + Duration::from_nanos(u64::try_from(step - late).unwrap_or(0))
    }
}

impl TimerConfig {
    /// Checks the values: T1 > 0 and T2 >= T1. The machines tolerate any
    /// value without hanging (each timer fires at most once per
    /// `handle_timeout`), but these make no sense on the wire.
    pub fn validate(&self) -> Result<(), TsxError> {
        if self.t1.is_zero() {
            return Err(TsxError::ZeroT1);
        }
        if self.t2 < self.t1 {
            return Err(TsxError::T2BelowT1 { t1: self.t1, t2: self.t2 });
        }
        Ok(())
    }

    /// 64*T1: Timers B, F, H, J (unreliable), L and M.
    fn t1_x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// Timer A's first interval (client INVITE retransmission): T1, then
    /// doubling without cap until Timer B.
    pub fn timer_a(&self) -> Duration {
        self.t1
    }

    /// Timer B (client INVITE transaction timeout): 64*T1.
    pub fn timer_b(&self) -> Duration {
        self.t1_x64()
    }

    /// Timer D (client INVITE wait for response retransmissions in
    /// Completed): max(32 s, 64*T1) unreliable, zero reliable.
    pub fn timer_d(&self, reliability: Reliability) -> Duration {
        match reliability {
            Reliability::Unreliable => self.t1_x64().max(TIMER_D_MIN),
            Reliability::Reliable => Duration::ZERO,
        }
    }

    /// Timer E's first interval (client non-INVITE retransmission): T1,
    /// then doubling capped at T2; T2 from the first firing in Proceeding.
    pub fn timer_e(&self) -> Duration {
        self.t1
    }

    /// Timer F (client non-INVITE transaction timeout): 64*T1.
    pub fn timer_f(&self) -> Duration {
        self.t1_x64()
    }

    /// Timer G's first interval (server INVITE final response
    /// retransmission): T1, then doubling capped at T2.
    pub fn timer_g(&self) -> Duration {
        self.t1
    }

    /// Timer H (server INVITE wait for ACK): 64*T1.
    pub fn timer_h(&self) -> Duration {
        self.t1_x64()
    }

    /// Timer I (server INVITE wait for ACK retransmissions in Confirmed):
    /// T4 unreliable, zero reliable.
    pub fn timer_i(&self, reliability: Reliability) -> Duration {
        match reliability {
            Reliability::Unreliable => self.t4,
            Reliability::Reliable => Duration::ZERO,
        }
    }

    /// Timer J (server non-INVITE wait for request retransmissions in
    /// Completed): 64*T1 unreliable, zero reliable.
    pub fn timer_j(&self, reliability: Reliability) -> Duration {
        match reliability {
            Reliability::Unreliable => self.t1_x64(),
            Reliability::Reliable => Duration::ZERO,
        }
    }

    /// Timer K (client non-INVITE wait for response retransmissions in
    /// Completed): T4 unreliable, zero reliable.
    pub fn timer_k(&self, reliability: Reliability) -> Duration {
        match reliability {
            Reliability::Unreliable => self.t4,
            Reliability::Reliable => Duration::ZERO,
        }
    }

    /// Timer L (RFC 6026, server INVITE in Accepted: absorb INVITE
    /// retransmissions, pass ACKs to the TU): 64*T1.
    pub fn timer_l(&self) -> Duration {
        self.t1_x64()
    }

    /// Timer M (RFC 6026, client INVITE in Accepted: pass further 2xx to
    /// the TU): 64*T1.
    pub fn timer_m(&self) -> Duration {
        self.t1_x64()
    }

    /// When a lingering timer (D, I, J, K, L, M) of `wait` armed at `now`
    /// fires: `now + wait` rounded up to [`linger_grid`](Self::linger_grid).
    /// A zero wait (reliable transports) stays zero: nothing lingers.
    pub(super) fn linger(&self, now: Instant, wait: Duration) -> Instant {
        match self.linger_grid {
            Some(grid) if !wait.is_zero() => grid.round_up(now + wait),
            _ => now + wait,
        }
    }

    /// The interval after `previous` for a doubling retransmission timer:
    /// uncapped for A, capped at T2 for E and G.
    pub(super) fn doubled(&self, previous: Duration, capped: bool) -> Duration {
        let next = previous.saturating_mul(2);
        if capped { next.min(self.t2) } else { next }
    }
}

/// The timers of §17 by their RFC names, plus the 100 Trying delay.
///
/// Each machine arms only its own: A, B, D, M (client INVITE); E, F, K
/// (client non-INVITE); G, H, I, L, `Trying` (server INVITE); J (server
/// non-INVITE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Client INVITE request retransmission (unreliable only).
    A,
    /// Client INVITE transaction timeout in Calling.
    B,
    /// Client INVITE wait in Completed.
    D,
    /// Client non-INVITE request retransmission (unreliable only).
    E,
    /// Client non-INVITE transaction timeout.
    F,
    /// Server INVITE final response retransmission (unreliable only).
    G,
    /// Server INVITE wait for ACK.
    H,
    /// Server INVITE wait in Confirmed.
    I,
    /// Server non-INVITE wait in Completed.
    J,
    /// Client non-INVITE wait in Completed.
    K,
    /// Server INVITE wait in Accepted (RFC 6026).
    L,
    /// Client INVITE wait in Accepted (RFC 6026).
    M,
    /// Server INVITE: ask the TU for a 100 Trying ([`TRYING_DELAY`]).
    Trying,
}

impl Timer {
    const COUNT: usize = 13;

    fn index(self) -> usize {
        self as usize
    }

    fn from_index(index: usize) -> Timer {
        const ALL: [Timer; Timer::COUNT] = [
            Timer::A,
            Timer::B,
            Timer::D,
            Timer::E,
            Timer::F,
            Timer::G,
            Timer::H,
            Timer::I,
            Timer::J,
            Timer::K,
            Timer::L,
            Timer::M,
            Timer::Trying,
        ];
        ALL[index]
    }
}

/// The deadlines of one machine's armed timers (quinn's `TimerTable`).
#[derive(Clone, Debug, Default)]
pub(super) struct TimerTable {
    deadlines: [Option<Instant>; Timer::COUNT],
}

impl TimerTable {
    /// Arms `timer` to fire at `deadline`, replacing any earlier arming.
    pub(super) fn set(&mut self, timer: Timer, deadline: Instant) {
        self.deadlines[timer.index()] = Some(deadline);
    }

    /// Disarms `timer`.
    pub(super) fn stop(&mut self, timer: Timer) {
        self.deadlines[timer.index()] = None;
    }

    /// Disarms every timer (the machine terminated).
    pub(super) fn stop_all(&mut self) {
        self.deadlines = [None; Timer::COUNT];
    }

    /// The earliest deadline of any armed timer.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// Disarms and returns the earliest timer due at `now` that has not yet
    /// fired during this `handle_timeout` (`fired` is a bit set the caller
    /// keeps across the loop). Firing each timer at most once per call means
    /// a timer re-armed for `now` (a zero interval) waits for the next call
    /// instead of spinning.
    pub(super) fn pop_expired(&mut self, now: Instant, fired: &mut u16) -> Option<Timer> {
        let (index, _) = self
            .deadlines
            .iter()
            .enumerate()
            .filter(|(index, _)| *fired & (1 << index) == 0)
            .filter_map(|(index, deadline)| deadline.map(|d| (index, d)))
            .filter(|(_, deadline)| *deadline <= now)
            .min_by_key(|(_, deadline)| *deadline)?;
        *fired |= 1 << index;
        self.deadlines[index] = None;
        Some(Timer::from_index(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_rfc_values() {
        let config = TimerConfig::default();
        assert_eq!(config.t1, Duration::from_millis(500));
        assert_eq!(config.t2, Duration::from_secs(4));
        assert_eq!(config.t4, Duration::from_secs(5));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn derived_timers_follow_table_4() {
        let config = TimerConfig::default();
        let secs = Duration::from_secs;
        assert_eq!(config.timer_b(), secs(32));
        assert_eq!(config.timer_f(), secs(32));
        assert_eq!(config.timer_h(), secs(32));
        assert_eq!(config.timer_l(), secs(32));
        assert_eq!(config.timer_m(), secs(32));
        assert_eq!(config.timer_d(Reliability::Unreliable), secs(32));
        assert_eq!(config.timer_i(Reliability::Unreliable), secs(5));
        assert_eq!(config.timer_j(Reliability::Unreliable), secs(32));
        assert_eq!(config.timer_k(Reliability::Unreliable), secs(5));
        for wait in [
            config.timer_d(Reliability::Reliable),
            config.timer_i(Reliability::Reliable),
            config.timer_j(Reliability::Reliable),
            config.timer_k(Reliability::Reliable),
        ] {
            assert_eq!(wait, Duration::ZERO);
        }
    }

    #[test]
    fn timer_d_keeps_its_32_second_floor_when_t1_is_lowered() {
        let config = TimerConfig { t1: Duration::from_millis(100), ..TimerConfig::default() };
        assert_eq!(config.timer_b(), Duration::from_millis(6400));
        assert_eq!(config.timer_d(Reliability::Unreliable), TIMER_D_MIN);
    }

    #[test]
    fn validate_rejects_zero_t1_and_t2_below_t1() {
        let zero = TimerConfig { t1: Duration::ZERO, ..TimerConfig::default() };
        assert_eq!(zero.validate(), Err(TsxError::ZeroT1));
        let inverted = TimerConfig { t1: Duration::from_secs(5), t2: Duration::from_secs(4), ..TimerConfig::default() };
        assert!(matches!(inverted.validate(), Err(TsxError::T2BelowT1 { .. })));
    }

    #[test]
    fn pop_expired_fires_in_deadline_order_once_per_call() {
        let base = super::super::tests::base_instant();
        let mut table = TimerTable::default();
        table.set(Timer::B, base + Duration::from_secs(2));
        table.set(Timer::A, base + Duration::from_secs(1));
        table.set(Timer::D, base + Duration::from_secs(9));
        let now = base + Duration::from_secs(3);
        let mut fired = 0;
        assert_eq!(table.pop_expired(now, &mut fired), Some(Timer::A));
        // A timer re-armed for `now` does not fire again in the same call.
        table.set(Timer::A, now);
        assert_eq!(table.pop_expired(now, &mut fired), Some(Timer::B));
        assert_eq!(table.pop_expired(now, &mut fired), None);
        assert_eq!(table.next_deadline(), Some(now));
    }

    #[test]
    fn lingering_timers_round_up_to_the_grid_and_zero_waits_stay_zero() {
        let origin = crate::sip::transaction::tests::base_instant();
        let exact = TimerConfig::default();
        assert_eq!(exact.linger(origin, Duration::from_secs(32)), origin + Duration::from_secs(32));
        let step = Duration::from_millis(100);
        let coarse = TimerConfig { linger_grid: Some(Grid { origin, step }), ..TimerConfig::default() };
        for offset_ms in [0, 1, 37, 99, 100, 101, 250] {
            let now = origin + Duration::from_millis(offset_ms) + Duration::from_micros(3);
            let wait = Duration::from_secs(32);
            let at = coarse.linger(now, wait);
            // Never early, late by less than the step, on the grid.
            assert!(at >= now + wait, "{offset_ms}");
            assert!(at < now + wait + step, "{offset_ms}");
            assert_eq!((at - origin).as_nanos() % step.as_nanos(), 0, "{offset_ms}");
        }
        // Already on the grid: unchanged.
        let on = origin + Duration::from_millis(300);
        assert_eq!(coarse.linger(on, Duration::from_secs(5)), on + Duration::from_secs(5));
        // Reliable transports linger zero: still at once.
        let now = origin + Duration::from_millis(42);
        assert_eq!(coarse.linger(now, Duration::ZERO), now);
    }
}
