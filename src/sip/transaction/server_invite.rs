//! The INVITE server transaction (RFC 3261 §17.2.1, figure 7, as amended by
//! RFC 6026 §7.1 and §8.7 with the Accepted state and Timer L).
//!
//! ```text
//! state        input                  action                          next
//! (start)      INVITE                 arm Trying (200 ms)             Proceeding
//! Proceeding   Timer Trying           TryingDue to TU                 Proceeding
//! Proceeding   INVITE again           resend last 1xx, or TryingDue   Proceeding
//! Proceeding   1xx from TU            send                            Proceeding
//! Proceeding   2xx from TU            send; arm L                     Accepted
//! Proceeding   300-699 from TU        send; arm H, G (unreliable)     Completed
//! Completed    Timer G                resend final; G doubled, <= T2  Completed
//! Completed    INVITE again           resend final                    Completed
//! Completed    ACK                    absorb; arm I                   Confirmed
//! Completed    Timer H                Timeout{H} to TU                Terminated
//! Confirmed    ACK again              absorb                          Confirmed
//! Confirmed    Timer I                -                               Terminated
//! Accepted     INVITE again           absorb (no resend)              Accepted
//! Accepted     2xx from TU            send (the TU's retransmission)  Accepted
//! Accepted     ACK                    pass to TU                      Accepted
//! Accepted     Timer L                -                               Terminated
//! Accepted     transport error        TransportError to TU            Accepted
//! others       transport error        TransportError to TU            Terminated
//! ```

use super::outputs::Outputs;
use std::time::{Duration, Instant};

use super::layer::TsxState;
use super::timers::TimerTable;
use super::{Event, Reliability, StatusClass, StatusCode, TRYING_DELAY, Timer, TimerConfig, TsxError};

/// The states of [`ServerInvite`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerInviteState {
    /// INVITE received; the TU may send provisional responses.
    Proceeding,
    /// A 3xx-6xx was sent; retransmitting it until the ACK or Timer H.
    Completed,
    /// The ACK arrived; absorbing ACK retransmissions until Timer I.
    Confirmed,
    /// A 2xx was sent (RFC 6026); absorbing INVITE retransmissions and
    /// passing ACKs to the TU until Timer L.
    Accepted,
    /// Done; the machine does nothing more.
    Terminated,
}

/// What the server INVITE did with an ACK ([`ServerInvite::handle_ack`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckDisposition {
    /// The ACK of a non-2xx (or a duplicate): consumed by the transaction.
    Absorbed,
    /// RFC 6026 §7.1: an ACK in Accepted is the 2xx's, which the dialog
    /// owns: give it to the TU.
    PassToTu,
}

/// An INVITE server transaction (§17.2.1).
///
/// Created when an INVITE matches no transaction. The TU answers through
/// [`ServerInvite::send_response`]; retransmitted INVITEs go to
/// [`ServerInvite::handle_request`], ACKs to [`ServerInvite::handle_ack`].
#[derive(Debug)]
pub struct ServerInvite<M> {
    state: ServerInviteState,
    config: TimerConfig,
    reliability: Reliability,
    /// The last provisional response, resent on INVITE retransmissions.
    provisional: Option<M>,
    /// The 3xx-6xx, resent on Timer G and INVITE retransmissions.
    final_response: Option<M>,
    /// The interval Timer G was last armed with.
    timer_g_interval: Duration,
    timers: TimerTable,
    transmits: Outputs<M>,
    events: Outputs<Event>,
}

impl<M: Clone> ServerInvite<M> {
    /// Starts the transaction at `now`, when the INVITE arrived, in
    /// Proceeding, with the 100 Trying timer armed ([`TRYING_DELAY`]).
    pub fn new(now: Instant, config: TimerConfig, reliability: Reliability) -> ServerInvite<M> {
        let mut timers = TimerTable::default();
        timers.set(Timer::Trying, now + TRYING_DELAY);
        ServerInvite {
            state: ServerInviteState::Proceeding,
            config,
            reliability,
            provisional: None,
            final_response: None,
            timer_g_interval: config.timer_g(),
            timers,
            transmits: Outputs::default(),
            events: Outputs::default(),
        }
    }

    /// The current state.
    pub fn state(&self) -> ServerInviteState {
        self.state
    }

    /// A retransmission of the INVITE arrived. It never reaches the TU
    /// (§17.2.1); the client is reminded of the last response instead.
    pub fn handle_request(&mut self, now: Instant) {
        let _ = now;
        match self.state {
            ServerInviteState::Proceeding => match &self.provisional {
                Some(provisional) => self.transmits.push_back(provisional.clone()),
                None => {
                    // The client is retransmitting, so it has not heard
                    // from us: the 100 is due now, not at the timer.
                    self.timers.stop(Timer::Trying);
                    self.events.push_back(Event::TryingDue);
                }
            },
            ServerInviteState::Completed => {
                if let Some(response) = &self.final_response {
                    self.transmits.push_back(response.clone());
                }
            }
            // Accepted: RFC 6026 §7.1, absorbed; the TU retransmits the 2xx.
            ServerInviteState::Confirmed | ServerInviteState::Accepted | ServerInviteState::Terminated => {}
        }
    }

    /// An ACK matching this transaction arrived.
    pub fn handle_ack(&mut self, now: Instant) -> AckDisposition {
        match self.state {
            ServerInviteState::Completed => {
                self.timers.stop(Timer::G);
                self.timers.stop(Timer::H);
                self.timers.set(Timer::I, self.config.linger(now, self.config.timer_i(self.reliability)));
                self.state = ServerInviteState::Confirmed;
                AckDisposition::Absorbed
            }
            ServerInviteState::Accepted => AckDisposition::PassToTu,
            // Confirmed: a retransmitted ACK. Proceeding: an ACK for a
            // response never sent, meaningless. Both dropped.
            ServerInviteState::Proceeding | ServerInviteState::Confirmed | ServerInviteState::Terminated => {
                AckDisposition::Absorbed
            }
        }
    }

    /// The TU sends `response` with `status`. Provisional responses and the
    /// first final response are allowed in Proceeding, and further 2xx
    /// (the TU's own retransmissions) in Accepted; anything else is
    /// discarded with [`TsxError::ResponseNotAllowed`].
    pub fn send_response(&mut self, now: Instant, status: StatusCode, response: M) -> Result<(), TsxError> {
        use ServerInviteState::{Accepted, Completed, Proceeding};
        match (self.state, status.class()) {
            (Proceeding, StatusClass::Provisional) => {
                self.timers.stop(Timer::Trying);
                self.transmits.push_back(response.clone());
                self.provisional = Some(response);
            }
            (Proceeding, StatusClass::Success) => {
                self.timers.stop(Timer::Trying);
                self.timers.set(Timer::L, self.config.linger(now, self.config.timer_l()));
                self.state = Accepted;
                // Accepted absorbs INVITE retransmissions: the 1xx is no
                // longer resent, so not kept for the 32 s of Timer L.
                self.provisional = None;
                // Not kept: RFC 6026 leaves 2xx retransmission to the TU.
                self.transmits.push_back(response);
            }
            (Proceeding, _) => {
                self.timers.stop(Timer::Trying);
                if self.reliability == Reliability::Unreliable {
                    self.timers.set(Timer::G, now + self.timer_g_interval);
                }
                self.timers.set(Timer::H, now + self.config.timer_h());
                self.state = Completed;
                self.provisional = None;
                self.transmits.push_back(response.clone());
                self.final_response = Some(response);
            }
            (Accepted, StatusClass::Success) => self.transmits.push_back(response),
            (state, _) => {
                return Err(TsxError::ResponseNotAllowed { status, state: TsxState::ServerInvite(state) });
            }
        }
        Ok(())
    }

    /// The transport failed to send a response (§17.2.4): the TU is told
    /// and the transaction ends. In Accepted the TU owns the 2xx, and so
    /// the failure: it is only reported, and INVITE retransmissions go on
    /// being absorbed until Timer L.
    pub fn handle_transport_error(&mut self, now: Instant) {
        let _ = now;
        match self.state {
            ServerInviteState::Terminated => {}
            ServerInviteState::Accepted => self.events.push_back(Event::TransportError),
            _ => {
                self.events.push_back(Event::TransportError);
                self.terminate();
            }
        }
    }

    /// Fires the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        use ServerInviteState::{Accepted, Completed, Confirmed, Proceeding};
        let mut fired = 0;
        while let Some(timer) = self.timers.pop_expired(now, &mut fired) {
            match (timer, self.state) {
                (Timer::Trying, Proceeding) => self.events.push_back(Event::TryingDue),
                (Timer::G, Completed) => {
                    if let Some(response) = &self.final_response {
                        self.transmits.push_back(response.clone());
                    }
                    // §17.2.1: T1, then doubled, capped at T2, until H.
                    self.timer_g_interval = self.config.doubled(self.timer_g_interval, true);
                    self.timers.set(Timer::G, now + self.timer_g_interval);
                }
                (Timer::H, Completed) => {
                    self.events.push_back(Event::Timeout { timer: Timer::H });
                    self.terminate();
                }
                (Timer::I, Confirmed) | (Timer::L, Accepted) => self.terminate(),
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

    /// When to call [`ServerInvite::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    fn terminate(&mut self) {
        self.state = ServerInviteState::Terminated;
        self.timers.stop_all();
        self.events.push_back(Event::Terminated);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Out, Run, ms, status};
    use super::*;

    fn proceeding(reliability: Reliability) -> Run<ServerInvite<&'static str>> {
        Run::new(|now| ServerInvite::new(now, TimerConfig::default(), reliability))
    }

    #[test]
    fn trying_is_asked_for_after_200_ms_without_tu_response() {
        let mut run = proceeding(Reliability::Unreliable);
        run.step();
        assert_eq!(run.take_log(), [(200, Out::Event(Event::TryingDue))]);
        run.input(|m, now| m.send_response(now, StatusCode::TRYING, "100").unwrap());
        assert_eq!(run.machine.poll_timeout(), None);
        assert_eq!(run.take_log(), [(200, Out::Sent("100"))]);
    }

    #[test]
    fn quick_tu_response_needs_no_trying() {
        let mut run = proceeding(Reliability::Unreliable);
        run.run_until(ms(50));
        run.input(|m, now| m.send_response(now, status(180), "180").unwrap());
        run.run_until(ms(1_000));
        assert_eq!(run.take_log(), [(50, Out::Sent("180"))]);
    }

    #[test]
    fn retransmitted_invite_gets_the_last_provisional_or_asks_for_trying() {
        let mut run = proceeding(Reliability::Unreliable);
        run.run_until(ms(100));
        run.input(|m, now| m.handle_request(now));
        run.input(|m, now| m.send_response(now, StatusCode::TRYING, "100").unwrap());
        run.run_until(ms(500));
        run.input(|m, now| m.handle_request(now));
        run.input(|m, now| m.send_response(now, status(180), "180").unwrap());
        run.run_until(ms(1_500));
        run.input(|m, now| m.handle_request(now));
        assert_eq!(
            run.take_log(),
            [
                (100, Out::Event(Event::TryingDue)),
                (100, Out::Sent("100")),
                (500, Out::Sent("100")),
                (500, Out::Sent("180")),
                (1_500, Out::Sent("180")),
            ]
        );
    }

    #[test]
    fn timer_g_doubles_capped_at_t2_until_timer_h() {
        let mut run = proceeding(Reliability::Unreliable);
        run.input(|m, now| m.send_response(now, status(486), "486").unwrap());
        run.run_to_end();
        let sent: Vec<u64> = run.sent_at().into_iter().map(|(t, _)| t).collect();
        assert_eq!(sent, [0, 500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500]);
        assert_eq!(run.events_at(), [(32_000, Event::Timeout { timer: Timer::H }), (32_000, Event::Terminated)]);
    }

    #[test]
    fn invite_retransmission_in_completed_resends_the_final_response() {
        let mut run = proceeding(Reliability::Reliable);
        run.input(|m, now| m.send_response(now, status(404), "404").unwrap());
        run.run_until(ms(300));
        run.input(|m, now| m.handle_request(now));
        assert_eq!(run.sent_at(), [(0, "404"), (300, "404")]);
    }

    #[test]
    fn ack_confirms_and_timer_i_ends_it() {
        let mut run = proceeding(Reliability::Unreliable);
        run.input(|m, now| m.send_response(now, status(603), "603").unwrap());
        run.run_until(ms(700));
        let disposition = run.machine.handle_ack(run.now);
        assert_eq!(disposition, AckDisposition::Absorbed);
        assert_eq!(run.machine.state(), ServerInviteState::Confirmed);
        run.run_until(ms(2_000));
        // A retransmitted ACK in Confirmed is absorbed too.
        assert_eq!(run.machine.handle_ack(run.now), AckDisposition::Absorbed);
        run.run_to_end();
        assert_eq!(run.sent_at(), [(0, "603"), (500, "603")]);
        assert_eq!(run.events_at(), [(5_700, Event::Terminated)]);
    }

    #[test]
    fn timers_h_and_i_on_reliable_transports() {
        let mut run = proceeding(Reliability::Reliable);
        run.input(|m, now| m.send_response(now, status(480), "480").unwrap());
        // No Timer G: H alone is armed.
        assert_eq!(run.machine.poll_timeout(), Some(run.base + ms(32_000)));
        run.run_until(ms(100));
        let _ = run.machine.handle_ack(run.now);
        assert_eq!(run.machine.poll_timeout(), Some(run.now));
        run.run_to_end();
        assert_eq!(run.events_at(), [(100, Event::Terminated)]);
        assert_eq!(run.sent_at(), [(0, "480")]);
    }

    #[test]
    fn accepted_absorbs_invites_passes_acks_and_ends_on_timer_l() {
        let mut run = proceeding(Reliability::Unreliable);
        run.run_until(ms(100));
        run.input(|m, now| m.send_response(now, status(200), "200").unwrap());
        assert_eq!(run.machine.state(), ServerInviteState::Accepted);
        run.run_until(ms(600));
        // The TU retransmits its 2xx itself; the transaction never does.
        run.input(|m, now| m.send_response(now, status(200), "200").unwrap());
        run.input(|m, now| m.handle_request(now));
        assert_eq!(run.machine.handle_ack(run.now), AckDisposition::PassToTu);
        let late = run.machine.send_response(run.now, status(500), "500");
        assert!(matches!(late, Err(TsxError::ResponseNotAllowed { .. })));
        run.run_to_end();
        assert_eq!(run.sent_at(), [(100, "200"), (600, "200")]);
        assert_eq!(run.events_at(), [(32_100, Event::Terminated)]);
    }

    #[test]
    fn second_final_response_is_refused() {
        let mut run = proceeding(Reliability::Unreliable);
        run.input(|m, now| m.send_response(now, status(486), "486").unwrap());
        let second = run.machine.send_response(run.now, status(200), "200");
        assert_eq!(
            second,
            Err(TsxError::ResponseNotAllowed {
                status: status(200),
                state: TsxState::ServerInvite(ServerInviteState::Completed),
            })
        );
    }

    #[test]
    fn transport_error_terminates_except_in_accepted() {
        let mut run = proceeding(Reliability::Unreliable);
        run.input(|m, now| m.send_response(now, status(486), "486").unwrap());
        run.input(|m, now| m.handle_transport_error(now));
        assert_eq!(run.machine.state(), ServerInviteState::Terminated);

        let mut run = proceeding(Reliability::Unreliable);
        run.input(|m, now| m.send_response(now, status(200), "200").unwrap());
        run.input(|m, now| m.handle_transport_error(now));
        assert_eq!(run.machine.state(), ServerInviteState::Accepted);
        assert_eq!(run.events_at(), [(0, Event::TransportError)]);
    }
}
