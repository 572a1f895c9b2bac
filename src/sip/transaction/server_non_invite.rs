//! The non-INVITE server transaction (RFC 3261 §17.2.2, figure 8).
//!
//! ```text
//! state              input            action                    next
//! (start)            request          to TU (by the layer)      Trying
//! Trying             request again    absorb                    Trying
//! Trying|Proceeding  1xx from TU      send                      Proceeding
//! Trying|Proceeding  200-699 from TU  send; arm J               Completed
//! Proceeding         request again    resend last 1xx           Proceeding
//! Completed          request again    resend final              Completed
//! Completed          Timer J          -                         Terminated
//! any                transport error  TransportError to TU      Terminated
//! ```
//!
//! The TU has no deadline here: a server transaction waits in Trying for
//! as long as the TU takes (§17.2.2), which is why trunkgate's TU answers
//! every request it accepts.

use super::outputs::Outputs;
use std::time::Instant;

use super::layer::TsxState;
use super::timers::TimerTable;
use super::{Event, Reliability, StatusCode, Timer, TimerConfig, TsxError};

/// The states of [`ServerNonInvite`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerNonInviteState {
    /// Request received, nothing sent yet.
    Trying,
    /// A provisional response was sent.
    Proceeding,
    /// The final response was sent; answering retransmissions with it
    /// until Timer J.
    Completed,
    /// Done; the machine does nothing more.
    Terminated,
}

/// A non-INVITE server transaction (§17.2.2), including CANCEL's own.
#[derive(Debug)]
pub struct ServerNonInvite<M> {
    state: ServerNonInviteState,
    config: TimerConfig,
    reliability: Reliability,
    /// The last response sent, resent on request retransmissions.
    last_response: Option<M>,
    timers: TimerTable,
    transmits: Outputs<M>,
    events: Outputs<Event>,
}

impl<M: Clone> ServerNonInvite<M> {
    /// Starts the transaction at `now`, when the request arrived, in
    /// Trying. No timer runs until the TU answers.
    pub fn new(now: Instant, config: TimerConfig, reliability: Reliability) -> ServerNonInvite<M> {
        let _ = now;
        ServerNonInvite {
            state: ServerNonInviteState::Trying,
            config,
            reliability,
            last_response: None,
            timers: TimerTable::default(),
            transmits: Outputs::default(),
            events: Outputs::default(),
        }
    }

    /// The current state.
    pub fn state(&self) -> ServerNonInviteState {
        self.state
    }

    /// A retransmission of the request arrived. It never reaches the TU;
    /// the last response, if any, is resent (§17.2.2).
    pub fn handle_request(&mut self, now: Instant) {
        let _ = now;
        match self.state {
            ServerNonInviteState::Proceeding | ServerNonInviteState::Completed => {
                if let Some(response) = &self.last_response {
                    self.transmits.push_back(response.clone());
                }
            }
            ServerNonInviteState::Trying | ServerNonInviteState::Terminated => {}
        }
    }

    /// The TU sends `response` with `status`: allowed until the final
    /// response; afterwards discarded with [`TsxError::ResponseNotAllowed`].
    pub fn send_response(&mut self, now: Instant, status: StatusCode, response: M) -> Result<(), TsxError> {
        match self.state {
            ServerNonInviteState::Trying | ServerNonInviteState::Proceeding => {
                if status.is_provisional() {
                    self.state = ServerNonInviteState::Proceeding;
                } else {
                    self.state = ServerNonInviteState::Completed;
                    self.timers.set(Timer::J, self.config.linger(now, self.config.timer_j(self.reliability)));
                }
                self.transmits.push_back(response.clone());
                self.last_response = Some(response);
                Ok(())
            }
            state => Err(TsxError::ResponseNotAllowed { status, state: TsxState::ServerNonInvite(state) }),
        }
    }

    /// The transport failed to send a response (§17.2.4): the TU is told
    /// and the transaction ends.
    pub fn handle_transport_error(&mut self, now: Instant) {
        let _ = now;
        if self.state != ServerNonInviteState::Terminated {
            self.events.push_back(Event::TransportError);
            self.terminate();
        }
    }

    /// Fires the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut fired = 0;
        while let Some(timer) = self.timers.pop_expired(now, &mut fired) {
            if timer == Timer::J && self.state == ServerNonInviteState::Completed {
                self.terminate();
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

    /// When to call [`ServerNonInvite::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    fn terminate(&mut self) {
        self.state = ServerNonInviteState::Terminated;
        self.timers.stop_all();
        self.events.push_back(Event::Terminated);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Run, ms, status};
    use super::*;

    fn trying(reliability: Reliability) -> Run<ServerNonInvite<&'static str>> {
        Run::new(|now| ServerNonInvite::new(now, TimerConfig::default(), reliability))
    }

    #[test]
    fn retransmissions_are_absorbed_and_answered_with_the_last_response() {
        let mut run = trying(Reliability::Unreliable);
        run.run_until(ms(100));
        // Trying: nothing to resend yet.
        run.input(|m, now| m.handle_request(now));
        run.input(|m, now| m.send_response(now, status(183), "183").unwrap());
        run.run_until(ms(600));
        run.input(|m, now| m.handle_request(now));
        run.input(|m, now| m.send_response(now, status(200), "200").unwrap());
        run.run_until(ms(1_600));
        run.input(|m, now| m.handle_request(now));
        assert_eq!(run.sent_at(), [(100, "183"), (600, "183"), (600, "200"), (1_600, "200")]);
        assert_eq!(run.events_at(), []);
    }

    #[test]
    fn timer_j_is_64_t1_on_unreliable_transports() {
        let mut run = trying(Reliability::Unreliable);
        run.run_until(ms(250));
        run.input(|m, now| m.send_response(now, status(200), "200").unwrap());
        run.run_to_end();
        assert_eq!(run.events_at(), [(32_250, Event::Terminated)]);
    }

    #[test]
    fn timer_j_is_zero_on_reliable_transports() {
        let mut run = trying(Reliability::Reliable);
        run.run_until(ms(250));
        run.input(|m, now| m.send_response(now, status(200), "200").unwrap());
        assert_eq!(run.machine.poll_timeout(), Some(run.now));
        run.run_to_end();
        assert_eq!(run.events_at(), [(250, Event::Terminated)]);
    }

    #[test]
    fn responses_after_the_final_one_are_refused() {
        let mut run = trying(Reliability::Unreliable);
        run.input(|m, now| m.send_response(now, status(200), "200").unwrap());
        let late = run.machine.send_response(run.now, status(180), "180");
        assert_eq!(
            late,
            Err(TsxError::ResponseNotAllowed {
                status: status(180),
                state: TsxState::ServerNonInvite(ServerNonInviteState::Completed),
            })
        );
        assert_eq!(run.sent_at(), [(0, "200")]);
    }

    #[test]
    fn transport_error_terminates() {
        let mut run = trying(Reliability::Unreliable);
        run.input(|m, now| m.send_response(now, status(200), "200").unwrap());
        run.input(|m, now| m.handle_transport_error(now));
        assert_eq!(run.events_at(), [(0, Event::TransportError), (0, Event::Terminated)]);
        assert_eq!(run.machine.poll_timeout(), None);
    }
}
