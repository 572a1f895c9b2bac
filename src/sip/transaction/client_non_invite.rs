//! The non-INVITE client transaction (RFC 3261 §17.1.2, figure 6).
//!
//! ```text
//! state             input             action                          next
//! (start)           request from TU   send; arm F, E (unreliable)     Trying
//! Trying            Timer E           resend; E = min(2E, T2)         Trying
//! Proceeding        Timer E           resend; E = T2                  Proceeding
//! Trying|Proceeding 1xx               to TU                           Proceeding
//! Trying|Proceeding 200-699           to TU; stop E, F; arm K         Completed
//! Trying|Proceeding Timer F           Timeout{F} to TU                Terminated
//! any               transport error   TransportError to TU            Terminated
//! Completed         200-699 again     absorb                          Completed
//! Completed         Timer K           -                               Terminated
//! ```
//!
//! Timer F keeps running in Proceeding (unlike the INVITE's Timer B): a
//! non-INVITE request must be answered within 64*T1 whatever the 1xx says.

use super::outputs::Outputs;
use std::time::{Duration, Instant};

use super::timers::TimerTable;
use super::{Event, Reliability, StatusCode, Timer, TimerConfig};

/// The states of [`ClientNonInvite`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientNonInviteState {
    /// Request sent, no response yet; Timers E and F run.
    Trying,
    /// A provisional response arrived; E now retransmits every T2.
    Proceeding,
    /// A final response arrived; absorbing its retransmissions until
    /// Timer K.
    Completed,
    /// Done; the machine does nothing more.
    Terminated,
}

/// A non-INVITE client transaction (§17.1.2): BYE, CANCEL, OPTIONS,
/// REGISTER, INFO, ...
///
/// Created by sending the request. Feed it the matching responses
/// ([`ClientNonInvite::handle_response`]) and drive it with
/// [`ClientNonInvite::handle_timeout`] at [`ClientNonInvite::poll_timeout`].
#[derive(Debug)]
pub struct ClientNonInvite<M> {
    state: ClientNonInviteState,
    config: TimerConfig,
    reliability: Reliability,
    /// The request, resent on each Timer E.
    request: M,
    /// The interval Timer E was last armed with.
    timer_e_interval: Duration,
    timers: TimerTable,
    transmits: Outputs<M>,
    events: Outputs<Event>,
}

impl<M: Clone> ClientNonInvite<M> {
    /// Starts the transaction at `now`: `request` is queued for
    /// transmission, Timer F is armed and, on an unreliable transport,
    /// Timer E.
    pub fn new(now: Instant, config: TimerConfig, reliability: Reliability, request: M) -> ClientNonInvite<M> {
        let mut timers = TimerTable::default();
        if reliability == Reliability::Unreliable {
            timers.set(Timer::E, now + config.timer_e());
        }
        timers.set(Timer::F, now + config.timer_f());
        ClientNonInvite {
            state: ClientNonInviteState::Trying,
            config,
            reliability,
            transmits: Outputs::one(request.clone()),
            request,
            timer_e_interval: config.timer_e(),
            timers,
            events: Outputs::default(),
        }
    }

    /// The current state.
    pub fn state(&self) -> ClientNonInviteState {
        self.state
    }

    /// A response matching this transaction arrived.
    pub fn handle_response(&mut self, now: Instant, status: StatusCode) {
        use ClientNonInviteState::{Completed, Proceeding, Terminated, Trying};
        match self.state {
            Trying | Proceeding if status.is_provisional() => {
                // Timer E keeps its current deadline; the next firing
                // switches it to T2 (§17.1.2.2).
                self.state = Proceeding;
                self.events.push_back(Event::Response { status });
            }
            Trying | Proceeding => {
                self.timers.stop(Timer::E);
                self.timers.stop(Timer::F);
                self.timers.set(Timer::K, self.config.linger(now, self.config.timer_k(self.reliability)));
                self.state = Completed;
                self.events.push_back(Event::Response { status });
            }
            // Retransmissions of the final response: absorbed.
            Completed | Terminated => {}
        }
    }

    /// The transport failed to send the request (§17.1.4): the TU is told
    /// and the transaction ends.
    pub fn handle_transport_error(&mut self, now: Instant) {
        let _ = now;
        if self.state != ClientNonInviteState::Terminated {
            self.events.push_back(Event::TransportError);
            self.terminate();
        }
    }

    /// Fires the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        use ClientNonInviteState::{Completed, Proceeding, Trying};
        let mut fired = 0;
        while let Some(timer) = self.timers.pop_expired(now, &mut fired) {
            match (timer, self.state) {
                (Timer::E, Trying) => {
                    self.timer_e_interval = self.config.doubled(self.timer_e_interval, true);
                    self.retransmit(now);
                }
                (Timer::E, Proceeding) => {
                    self.timer_e_interval = self.config.t2;
                    self.retransmit(now);
                }
                (Timer::F, Trying | Proceeding) => {
                    self.events.push_back(Event::Timeout { timer: Timer::F });
                    self.terminate();
                }
                (Timer::K, Completed) => self.terminate(),
                // Every transition stops the timers it leaves behind.
                _ => {}
            }
        }
    }

    /// The next message to hand to the transport.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<M> {
        self.transmits.pop_front()
    }

    /// The next event for the TU.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`ClientNonInvite::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    fn retransmit(&mut self, now: Instant) {
        self.transmits.push_back(self.request.clone());
        self.timers.set(Timer::E, now + self.timer_e_interval);
    }

    fn terminate(&mut self) {
        self.state = ClientNonInviteState::Terminated;
        self.timers.stop_all();
        self.events.push_back(Event::Terminated);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Run, ms, status};
    use super::*;

    fn trying(reliability: Reliability) -> Run<ClientNonInvite<&'static str>> {
        Run::new(|now| ClientNonInvite::new(now, TimerConfig::default(), reliability, "BYE"))
    }

    fn sent_times(run: &Run<ClientNonInvite<&'static str>>) -> Vec<u64> {
        run.sent_at().into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn timer_e_doubles_capped_at_t2_until_timer_f() {
        let mut run = trying(Reliability::Unreliable);
        run.run_to_end();
        assert_eq!(sent_times(&run), [0, 500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500]);
        assert_eq!(run.events_at(), [(32_000, Event::Timeout { timer: Timer::F }), (32_000, Event::Terminated)]);
    }

    #[test]
    fn timer_e_goes_to_t2_once_proceeding() {
        let mut run = trying(Reliability::Unreliable);
        // E fired at 0.5 s and is due again at 1.5 s (interval 1 s).
        run.run_until(ms(600));
        run.input(|m, now| m.handle_response(now, status(100)));
        run.run_until(ms(14_000));
        assert_eq!(sent_times(&run), [0, 500, 1_500, 5_500, 9_500, 13_500]);
        assert_eq!(run.machine.state(), ClientNonInviteState::Proceeding);
    }

    #[test]
    fn timer_f_still_runs_in_proceeding() {
        let mut run = trying(Reliability::Reliable);
        run.input(|m, now| m.handle_response(now, status(100)));
        run.run_to_end();
        assert_eq!(
            run.events_at(),
            [
                (0, Event::Response { status: status(100) }),
                (32_000, Event::Timeout { timer: Timer::F }),
                (32_000, Event::Terminated),
            ]
        );
    }

    #[test]
    fn final_response_goes_to_tu_once_and_timer_k_ends_it() {
        let mut run = trying(Reliability::Unreliable);
        run.run_until(ms(700));
        run.input(|m, now| m.handle_response(now, status(200)));
        run.run_until(ms(2_000));
        run.input(|m, now| m.handle_response(now, status(200)));
        run.run_to_end();
        assert_eq!(sent_times(&run), [0, 500]);
        assert_eq!(run.events_at(), [(700, Event::Response { status: status(200) }), (5_700, Event::Terminated),]);
    }

    #[test]
    fn timer_k_is_zero_on_reliable_transports() {
        let mut run = trying(Reliability::Reliable);
        run.run_until(ms(30));
        run.input(|m, now| m.handle_response(now, status(481)));
        assert_eq!(run.machine.poll_timeout(), Some(run.now));
        run.run_to_end();
        assert_eq!(run.events_at().last(), Some(&(30, Event::Terminated)));
    }

    #[test]
    fn transport_error_terminates() {
        let mut run = trying(Reliability::Unreliable);
        run.input(|m, now| m.handle_transport_error(now));
        assert_eq!(run.machine.state(), ClientNonInviteState::Terminated);
        assert_eq!(run.machine.poll_timeout(), None);
    }
}
