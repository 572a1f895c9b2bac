//! When a core hands its UDP sends to a thread of its own.
//!
//! A `sendmmsg` costs the sender the kernel's whole delivery, on loopback
//! the receiver's side too: about a fifth of a busy core's CPU (profiled at
//! 6000 calls a second, bench/RESULTS.md, issue 11). A core runs on one
//! thread, so near its capacity that fifth is what it runs out of first.
//! Handed to a thread of its own ([`crate::transport::SendThread`]), the
//! work runs beside the core on another CPU; but each hand-over may wake
//! that thread, which costs more than it saves while the core has time to
//! spare. So a core measures how busy its thread is and hands its sends
//! over only while that is above a threshold (`[sip] send_thread_busy_pct`),
//! back to sending them itself once it falls 40 points below (hysteresis,
//! so a load at the threshold does not flip it every reading).
//!
//! Busy means the CPU time of the core's thread over wall time, read every
//! [`WINDOW`]. Sans-IO: both clocks are arguments.

use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// How often the thread's CPU time is read.
pub const WINDOW: Duration = Duration::from_millis(100);

/// Hands sends over above the threshold; sends them itself again below
/// this many points less. A hand-over takes up to two fifths off the busy
/// share: with 25 points a core at 7000 calls a second went from 73 % to
/// 43 % handed over, back, and flipped every two seconds (bench/RESULTS.md,
/// issue 11).
const HYSTERESIS_PCT: u32 = 40;

/// One core's choice between sending itself and handing over.
#[derive(Debug)]
pub struct Switch {
    /// Busy share (percent) above which sends are handed over; 100 or
    /// more: never.
    above_pct: u32,
    /// The last reading: when, on which thread, its CPU time.
    last: Option<(Instant, ThreadId, Duration)>,
    on: bool,
}

impl Switch {
    /// `above_pct`: 0 hands over always, 100 never.
    pub fn new(above_pct: u32) -> Self {
        Self { above_pct, last: None, on: above_pct == 0 }
    }

    /// Whether sends are handed over now.
    pub fn on(&self) -> bool {
        self.on
    }

    /// Whether a reading is due at `now` ([`Self::reading`]).
    pub fn due(&self, now: Instant) -> bool {
        if self.above_pct == 0 || self.above_pct >= 100 {
            return false;
        }
        self.last.is_none_or(|(at, _, _)| now.saturating_duration_since(at) >= WINDOW)
    }

    /// The CPU time `cpu` of thread `thread` at `now`. A reading on
    /// another thread than the last (a runtime with several workers moved
    /// the core) starts a new window and decides nothing. Returns the busy
    /// share (percent) of the window when the reading turned the switch
    /// (the core logs it).
    pub fn reading(&mut self, now: Instant, thread: ThreadId, cpu: Duration) -> Option<u32> {
        let mut turned = None;
        if let Some((at, last_thread, last_cpu)) = self.last
            && last_thread == thread
        {
            let wall = now.saturating_duration_since(at).as_nanos();
            if let Some(busy) = cpu.saturating_sub(last_cpu).as_nanos().saturating_mul(100).checked_div(wall) {
                let busy = u32::try_from(busy).unwrap_or(u32::MAX);
                let on =
                    if self.on { busy >= self.above_pct.saturating_sub(HYSTERESIS_PCT) } else { busy > self.above_pct };
                if on != self.on {
                    turned = Some(busy);
                }
                self.on = on;
            }
        }
        self.last = Some((now, thread, cpu));
        turned
    }
}

/// The CPU time of the calling thread, if the system tells it.
pub fn thread_cpu_time() -> Option<Duration> {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    Some(Duration::new(u64::try_from(ts.tv_sec()).ok()?, u32::try_from(ts.tv_nsec()).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Readings every 100 ms with the thread busy `pcts[i]` percent of
    /// each window; what the switch said after each.
    fn run(switch: &mut Switch, pcts: &[u64]) -> Vec<bool> {
        let t0 = crate::clock::instant();
        let thread = std::thread::current().id();
        let mut cpu = Duration::ZERO;
        assert_eq!(switch.reading(t0, thread, cpu), None, "the first reading only starts a window");
        let mut out = Vec::new();
        for (i, p) in pcts.iter().enumerate() {
            let now = t0 + ms(100) * u32::try_from(i + 1).unwrap();
            cpu += ms(*p);
            let was = switch.on();
            let turned = switch.reading(now, thread, cpu);
            // The busy share is told exactly when the switch turns.
            assert_eq!(turned, (switch.on() != was).then_some(u32::try_from(*p).unwrap()), "after {p} %");
            out.push(switch.on());
        }
        out
    }

    #[test]
    fn hands_over_above_the_threshold_and_back_well_below_it() {
        let mut s = Switch::new(70);
        assert!(!s.on());
        // 70 % is not above 70; 71 is. Handed over, the share falls (to
        // 43 % at 7000 calls a second) and must stay handed over; below 30
        // it comes back.
        assert_eq!(
            run(&mut s, &[50, 70, 71, 58, 43, 30, 29, 60, 70]),
            [false, false, true, true, true, true, false, false, false]
        );
    }

    #[test]
    fn zero_hands_over_always_and_a_hundred_never() {
        let always = Switch::new(0);
        assert!(always.on());
        assert!(!always.due(crate::clock::instant()), "no reading needed");
        let mut never = Switch::new(100);
        assert!(!never.due(crate::clock::instant()));
        // Even fed readings (the core asks for none), 100 % is not above 100.
        assert_eq!(run(&mut never, &[100, 100]), [false, false]);
        assert!(always.on());
    }

    #[test]
    fn a_reading_is_due_once_a_window_has_passed() {
        let mut s = Switch::new(70);
        let t0 = crate::clock::instant();
        assert!(s.due(t0), "the first reading starts the window");
        assert_eq!(s.reading(t0, std::thread::current().id(), Duration::ZERO), None);
        assert!(!s.due(t0 + ms(99)));
        assert!(s.due(t0 + ms(100)));
    }

    #[test]
    fn a_reading_on_another_thread_decides_nothing() {
        let mut s = Switch::new(70);
        let t0 = crate::clock::instant();
        let here = std::thread::current().id();
        let other = std::thread::spawn(|| std::thread::current().id()).join().unwrap();
        assert_eq!(s.reading(t0, here, Duration::ZERO), None);
        // Another thread's CPU clock: 95 ms against this one's 0 would read
        // as 95 % busy.
        assert_eq!(s.reading(t0 + ms(100), other, ms(95)), None);
        assert!(!s.on());
        // From that reading on, the same thread's windows count again.
        assert_eq!(s.reading(t0 + ms(200), other, ms(185)), Some(90));
        assert!(s.on());
    }

    #[test]
    fn the_calling_thread_has_a_cpu_clock_that_advances_with_its_work() {
        let before = thread_cpu_time().expect("CLOCK_THREAD_CPUTIME_ID");
        let mut x = 0u64;
        let start = crate::clock::instant();
        while crate::clock::instant().saturating_duration_since(start) < ms(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = thread_cpu_time().expect("CLOCK_THREAD_CPUTIME_ID");
        // 20 ms of spinning: at least some of it on the CPU (the box may be
        // loaded), and never more than the wall time.
        assert!(after > before, "{before:?} -> {after:?}");
        let wall = crate::clock::instant().saturating_duration_since(start);
        assert!(after - before <= wall + ms(5), "{before:?} -> {after:?}");
    }
}
