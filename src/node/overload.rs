//! Overload control: a core sheds new calls by how long they waited.
//!
//! Each message is stamped when it is read off its socket; a core sees how
//! long a new INVITE queued before it got to it. Past the node's capacity
//! that time grows, whatever the cause (more calls than the CPU can take, a
//! slow database, a neighbour on the machine), and a fixed call count
//! cannot see it. So a new INVITE that waited more than `max_queue` is
//! answered at once with `503` + Retry-After (`overloaded`), before it costs
//! the work of a call: the queue drains, and the INVITEs behind it wait
//! less and are admitted. Admitted calls stay at what the node can carry
//! and the excess is refused rather than left to time out, which is what
//! starts a retransmission storm. Only new INVITEs are shed:
//! retransmissions, ACKs, in-dialog requests and responses carry calls
//! already admitted and go through whatever their wait.
//!
//! Retry-After grows with the overload's length: 1 s in its first second,
//! then 2, 4, up to 8 s, and back to 1 once a second passes with nothing
//! shed. A PBX honouring it spreads its retries instead of sending them back
//! at once.
//!
//! Sans-IO: time is an argument, so tests run in virtual time.

use std::time::{Duration, Instant};

/// Longest Retry-After, seconds.
const MAX_RETRY_AFTER_S: u32 = 8;

/// What becomes of a new INVITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Goes on to admission.
    Admit,
    /// Answered `503 overloaded` with this Retry-After, seconds.
    Shed { retry_after_s: u32 },
}

/// One core's overload state.
#[derive(Debug)]
pub struct Overload {
    max_queue: Duration,
    /// When the current overload began (the first INVITE shed in it).
    since: Option<Instant>,
    /// The last INVITE shed.
    last_shed: Option<Instant>,
}

impl Overload {
    /// `max_queue`: the longest a new INVITE may wait; zero never sheds.
    pub fn new(max_queue: Duration) -> Self {
        Self { max_queue, since: None, last_shed: None }
    }

    /// A new INVITE read at `received` reaches the core at `now`.
    pub fn check(&mut self, now: Instant, received: Instant) -> Verdict {
        let queued = now.saturating_duration_since(received);
        let ongoing = self.last_shed.is_some_and(|l| now.saturating_duration_since(l) < Duration::from_secs(1));
        if !ongoing {
            self.since = None;
        }
        if self.max_queue.is_zero() || queued <= self.max_queue {
            return Verdict::Admit;
        }
        let since = *self.since.get_or_insert(now);
        self.last_shed = Some(now);
        Verdict::Shed { retry_after_s: retry_after(now.saturating_duration_since(since)) }
    }

    /// Retry-After for a refusal as `overloaded` decided elsewhere (the
    /// `max_calls` count): the current overload's, else 1 s.
    pub fn retry_after_s(&self, now: Instant) -> u32 {
        match (self.since, self.last_shed) {
            (Some(since), Some(l)) if now.saturating_duration_since(l) < Duration::from_secs(1) => {
                retry_after(now.saturating_duration_since(since))
            }
            _ => 1,
        }
    }
}

fn retry_after(lasted: Duration) -> u32 {
    let doublings = u32::try_from(lasted.as_secs()).unwrap_or(u32::MAX).min(3);
    (1u32 << doublings).min(MAX_RETRY_AFTER_S)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_invite_within_the_wait_is_admitted_one_past_it_shed() {
        let t0 = crate::clock::instant();
        let mut o = Overload::new(50 * MS);
        assert_eq!(o.check(t0 + 50 * MS, t0), Verdict::Admit);
        assert_eq!(o.check(t0 + 51 * MS, t0), Verdict::Shed { retry_after_s: 1 });
        // The queue drained: the next one is admitted.
        assert_eq!(o.check(t0 + 60 * MS, t0 + 55 * MS), Verdict::Admit);
    }

    #[test]
    fn zero_never_sheds() {
        let t0 = crate::clock::instant();
        let mut o = Overload::new(Duration::ZERO);
        assert_eq!(o.check(t0 + Duration::from_secs(30), t0), Verdict::Admit);
    }

    #[test]
    fn a_clock_read_before_the_stamp_counts_as_no_wait() {
        let t0 = crate::clock::instant() + Duration::from_secs(1);
        let mut o = Overload::new(MS);
        assert_eq!(o.check(t0, t0 + 10 * MS), Verdict::Admit);
    }

    #[test]
    fn retry_after_doubles_each_second_of_overload_and_resets_after_a_quiet_second() {
        let t0 = crate::clock::instant();
        let mut o = Overload::new(10 * MS);
        let mut seen = Vec::new();
        // Shedding every 100 ms for 5 s.
        for i in 0..50u32 {
            let now = t0 + i * 100 * MS;
            match o.check(now, now - 20 * MS) {
                Verdict::Shed { retry_after_s } => seen.push((i / 10, retry_after_s)),
                Verdict::Admit => panic!("not shed at {i}"),
            }
        }
        seen.dedup();
        assert_eq!(seen, vec![(0, 1), (1, 2), (2, 4), (3, 8), (4, 8)]);
        let last = t0 + 49 * 100 * MS;
        assert_eq!(o.retry_after_s(last + 999 * MS), 8, "still the same overload");
        // Admitted calls in between do not end it; a second with nothing
        // shed does.
        assert_eq!(o.check(last + 500 * MS, last + 499 * MS), Verdict::Admit);
        assert_eq!(o.retry_after_s(last + 1000 * MS), 1);
        let later = last + 1000 * MS;
        assert_eq!(o.check(later, later - 20 * MS), Verdict::Shed { retry_after_s: 1 });
    }

    #[test]
    fn gaps_under_a_second_keep_one_overload() {
        let t0 = crate::clock::instant();
        let mut o = Overload::new(10 * MS);
        assert_eq!(o.check(t0, t0 - 11 * MS), Verdict::Shed { retry_after_s: 1 });
        let t = t0 + 900 * MS;
        assert_eq!(o.check(t, t - 11 * MS), Verdict::Shed { retry_after_s: 1 });
        let t1 = t0 + 1800 * MS;
        assert_eq!(o.check(t1, t1 - 11 * MS), Verdict::Shed { retry_after_s: 2 });
    }
}
