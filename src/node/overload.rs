//! Overload control: a core sheds new calls when its queue stands too long.
//!
//! Each message is stamped when the kernel receives it (`SO_TIMESTAMPNS`,
//! else when read); a core sees how long each one queued before it got to
//! it. Past the node's capacity that time grows, whatever the cause (more
//! calls than the CPU can take, a slow database, a neighbour on the
//! machine), and a fixed call count cannot see it.
//!
//! The rule is CoDel's (Nichols and Jacobson, "Controlling Queue Delay",
//! 2012): a burst may make messages wait, and is absorbed; a queue whose
//! waits stay above the target (`max_queue`) for [`INTERVAL`] is a standing
//! queue, and then every new INVITE that waited past the target is answered
//! at once with `503` + Retry-After (`overloaded`), before it costs a call's
//! work. The queue drains, the first message under the target ends the
//! standing queue, and INVITEs are admitted again: admitted calls stay at
//! what the node can carry, the excess is refused rather than left to time
//! out (which is what starts a retransmission storm). Every message feeds
//! the measure; only new INVITEs are shed: retransmissions, ACKs, in-dialog
//! requests and responses carry calls already admitted.
//!
//! One difference from CoDel: a message that waited longer than the target
//! shows the queue stood above the target from the moment it did (FIFO: the
//! head of the queue is older still), so the standing time counts from then,
//! not from when the core first sees it. After a stall (a frozen VM, the
//! process stopped) the backlog is shed at once if it stood longer than
//! [`INTERVAL`], instead of admitting a stall's worth of calls.
//!
//! Retry-After grows with the overload's length: 1 s in its first second,
//! then 2, 4, up to 8 s, and back to 1 once a second passes with nothing
//! shed. A PBX honouring it spreads its retries instead of sending them back
//! at once.
//!
//! Sans-IO: time is an argument, so tests run in virtual time.

use std::time::{Duration, Instant};

/// How long waits must stay above the target before INVITEs are shed.
pub const INTERVAL: Duration = Duration::from_millis(200);

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
    /// Since when every message seen waited past the target.
    above_since: Option<Instant>,
    /// When the current overload began (the first INVITE shed in it).
    since: Option<Instant>,
    /// The last INVITE shed.
    last_shed: Option<Instant>,
}

impl Overload {
    /// `max_queue`: the target wait; zero never sheds.
    pub fn new(max_queue: Duration) -> Self {
        Self { max_queue, above_since: None, since: None, last_shed: None }
    }

    /// Any message read at `received` reaches the core at `now`.
    pub fn observe(&mut self, now: Instant, received: Instant) {
        if self.max_queue.is_zero() {
            return;
        }
        if now.saturating_duration_since(received) <= self.max_queue {
            self.above_since = None;
        } else {
            let crossed = received + self.max_queue;
            self.above_since = Some(self.above_since.map_or(crossed, |a| a.min(crossed)));
        }
    }

    /// A new INVITE read at `received` reaches the core at `now`.
    pub fn check(&mut self, now: Instant, received: Instant) -> Verdict {
        self.observe(now, received);
        let ongoing = self.last_shed.is_some_and(|l| now.saturating_duration_since(l) < Duration::from_secs(1));
        if !ongoing {
            self.since = None;
        }
        let standing = self.above_since.is_some_and(|a| now.saturating_duration_since(a) >= INTERVAL);
        if !standing {
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

    fn t0() -> Instant {
        crate::clock::instant()
    }

    #[test]
    fn a_burst_shorter_than_the_interval_is_absorbed() {
        let t0 = t0();
        let mut o = Overload::new(50 * MS);
        // A 100 ms stall: messages waited up to 150 ms, so the queue stood
        // above 50 ms for 100 ms (< 200): admitted.
        assert_eq!(o.check(t0 + 150 * MS, t0), Verdict::Admit);
        assert_eq!(o.check(t0 + 151 * MS, t0 + 1 * MS), Verdict::Admit);
        // Drained: a short wait ends it.
        o.observe(t0 + 152 * MS, t0 + 150 * MS);
        assert_eq!(o.check(t0 + 400 * MS, t0 + 300 * MS), Verdict::Admit, "a new burst starts afresh");
    }

    #[test]
    fn a_standing_queue_sheds_invites_past_the_target_until_one_message_is_under_it() {
        let t0 = t0();
        let mut o = Overload::new(50 * MS);
        // Every message waits 80 ms, steadily: above the target since the
        // first crossed it (t0 + 50); standing from t0 + 250.
        let wait = 80 * MS;
        let at = |ms: u32| t0 + ms * MS;
        assert_eq!(o.check(at(80), at(80) - wait), Verdict::Admit);
        o.observe(at(150), at(150) - wait);
        assert_eq!(o.check(at(249), at(249) - wait), Verdict::Admit, "199 ms above the target");
        assert_eq!(o.check(at(250), at(250) - wait), Verdict::Shed { retry_after_s: 1 }, "200 ms");
        assert_eq!(o.check(at(300), at(300) - wait), Verdict::Shed { retry_after_s: 1 });
        // A response that waited 10 ms: the queue drained, INVITEs admitted.
        o.observe(at(310), at(300));
        assert_eq!(o.check(at(320), at(320) - wait), Verdict::Admit);
    }

    #[test]
    fn a_wait_longer_than_target_and_interval_proves_a_standing_queue_at_once() {
        let t0 = t0();
        let mut o = Overload::new(50 * MS);
        // The process was stopped 3 s: the first message seen after it.
        let now = t0 + 3000 * MS;
        assert_eq!(o.check(now, t0), Verdict::Shed { retry_after_s: 1 });
        // 249 ms of wait is 199 ms above the target: not yet on its own.
        let mut fresh = Overload::new(50 * MS);
        assert_eq!(fresh.check(now, now - 249 * MS), Verdict::Admit);
        assert_eq!(fresh.check(now, now - 250 * MS), Verdict::Shed { retry_after_s: 1 });
    }

    #[test]
    fn zero_never_sheds() {
        let t0 = t0();
        let mut o = Overload::new(Duration::ZERO);
        assert_eq!(o.check(t0 + Duration::from_secs(30), t0), Verdict::Admit);
    }

    #[test]
    fn a_clock_read_before_the_stamp_counts_as_no_wait() {
        let t0 = t0() + Duration::from_secs(1);
        let mut o = Overload::new(MS);
        assert_eq!(o.check(t0, t0 + 10 * MS), Verdict::Admit);
    }

    #[test]
    fn retry_after_doubles_each_second_of_overload_and_resets_after_a_quiet_second() {
        let t0 = t0();
        let mut o = Overload::new(10 * MS);
        let mut seen = Vec::new();
        // A queue standing at 300 ms, INVITEs every 100 ms for 5 s.
        for i in 0..50u32 {
            let now = t0 + i * 100 * MS;
            match o.check(now, now - 300 * MS) {
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
        assert_eq!(o.check(later, later - 300 * MS), Verdict::Shed { retry_after_s: 1 });
    }

    #[test]
    fn gaps_under_a_second_keep_one_overload() {
        let t0 = t0();
        let mut o = Overload::new(10 * MS);
        let shed = |o: &mut Overload, now: Instant| o.check(now, now - 300 * MS);
        assert_eq!(shed(&mut o, t0), Verdict::Shed { retry_after_s: 1 });
        assert_eq!(shed(&mut o, t0 + 900 * MS), Verdict::Shed { retry_after_s: 1 });
        assert_eq!(shed(&mut o, t0 + 1800 * MS), Verdict::Shed { retry_after_s: 2 });
    }
}
