//! The INVITE client transaction (RFC 3261 §17.1.1, figure 5, as amended by
//! RFC 6026 §8.4 with the Accepted state and Timer M).
//!
//! ```text
//! state               input                 action                      next
//! (start)             INVITE from TU        send; arm B, A (unreliable) Calling
//! Calling             Timer A               resend INVITE; A doubled    Calling
//! Calling             Timer B               Timeout{B} to TU            Terminated
//! Calling|Proceeding  1xx                   to TU; stop A, B            Proceeding
//! Calling|Proceeding  2xx                   to TU; arm M                Accepted
//! Calling|Proceeding  300-699               AckNeeded; to TU; arm D     Completed
//! Completed           300-699 again         resend the ACK              Completed
//! Completed           Timer D               -                           Terminated
//! Accepted            2xx                   to TU (the dialog ACKs)     Accepted
//! Accepted            Timer M               -                           Terminated
//! any but Accepted    transport error       TransportError to TU        Terminated
//! Accepted            transport error       TransportError to TU        Accepted
//! ```
//!
//! Timer B guards Calling only, as in §17.1.1.2: once a provisional arrives
//! the call may ring for minutes, and the TU (the B2BUA's ring timeout, or
//! a CANCEL) ends it. Timer C would be that guard, but it is a proxy's.

use super::outputs::Outputs;
use std::time::{Duration, Instant};

use super::layer::TsxState;
use super::timers::TimerTable;
use super::{Event, Reliability, StatusClass, StatusCode, Timer, TimerConfig, TsxError};

/// The states of [`ClientInvite`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientInviteState {
    /// INVITE sent, no response yet; Timers A and B run.
    Calling,
    /// A provisional response arrived; waiting for the final one.
    Proceeding,
    /// A 3xx-6xx arrived and was ACKed; absorbing its retransmissions
    /// until Timer D.
    Completed,
    /// A 2xx arrived (RFC 6026); passing further 2xx to the TU until
    /// Timer M.
    Accepted,
    /// Done; the machine does nothing more.
    Terminated,
}

/// An INVITE client transaction (§17.1.1).
///
/// Created by sending the INVITE. Feed it the responses whose branch and
/// CSeq method match ([`ClientInvite::handle_response`]), answer
/// [`Event::AckNeeded`] with [`ClientInvite::send_ack`], and drive it with
/// [`ClientInvite::handle_timeout`] at [`ClientInvite::poll_timeout`].
#[derive(Debug)]
pub struct ClientInvite<M> {
    state: ClientInviteState,
    config: TimerConfig,
    reliability: Reliability,
    /// The INVITE, resent on each Timer A; dropped with the first response
    /// (Timer A stops then), so a transaction kept 32 s in Accepted does
    /// not keep the INVITE's bytes.
    request: Option<M>,
    /// The non-2xx ACK, once the caller built it; resent on each
    /// retransmitted final response.
    ack: Option<M>,
    /// The interval Timer A was last armed with.
    timer_a_interval: Duration,
    timers: TimerTable,
    transmits: Outputs<M>,
    events: Outputs<Event>,
}

impl<M: Clone> ClientInvite<M> {
    /// Starts the transaction at `now`: the INVITE `request` is queued for
    /// transmission, Timer B is armed and, on an unreliable transport,
    /// Timer A.
    pub fn new(now: Instant, config: TimerConfig, reliability: Reliability, request: M) -> ClientInvite<M> {
        let mut timers = TimerTable::default();
        if reliability == Reliability::Unreliable {
            timers.set(Timer::A, now + config.timer_a());
        }
        timers.set(Timer::B, now + config.timer_b());
        ClientInvite {
            state: ClientInviteState::Calling,
            config,
            reliability,
            transmits: Outputs::one(request.clone()),
            request: Some(request),
            ack: None,
            timer_a_interval: config.timer_a(),
            timers,
            events: Outputs::default(),
        }
    }

    /// The current state.
    pub fn state(&self) -> ClientInviteState {
        self.state
    }

    /// A response matching this transaction arrived.
    pub fn handle_response(&mut self, now: Instant, status: StatusCode) {
        use ClientInviteState::{Accepted, Calling, Completed, Proceeding, Terminated};
        self.request = None;
        match (self.state, status.class()) {
            (Calling | Proceeding, StatusClass::Provisional) => {
                self.timers.stop(Timer::A);
                self.timers.stop(Timer::B);
                self.state = Proceeding;
                self.events.push_back(Event::Response { status });
            }
            (Calling | Proceeding, StatusClass::Success) => {
                self.timers.stop(Timer::A);
                self.timers.stop(Timer::B);
                self.timers.set(Timer::M, self.config.linger(now, self.config.timer_m()));
                self.state = Accepted;
                self.events.push_back(Event::Response { status });
            }
            (Calling | Proceeding, _) => {
                self.timers.stop(Timer::A);
                self.timers.stop(Timer::B);
                self.timers.set(Timer::D, self.config.linger(now, self.config.timer_d(self.reliability)));
                self.state = Completed;
                // The ACK first: it is then on the wire before whatever the
                // TU sends in reaction (the INVITE again with credentials
                // after a 401/407 goes after it, as peers expect).
                self.events.push_back(Event::AckNeeded { status });
                self.events.push_back(Event::Response { status });
            }
            (Completed, class) if status.is_final() && class != StatusClass::Success => {
                // A retransmission: our ACK was lost. Not for the TU.
                match &self.ack {
                    Some(ack) => self.transmits.push_back(ack.clone()),
                    None => self.events.push_back(Event::AckNeeded { status }),
                }
            }
            (Accepted, StatusClass::Success) => {
                // RFC 6026 §8.4: the dialog ACKs every 2xx itself.
                self.events.push_back(Event::Response { status });
            }
            // A 1xx or 2xx after a non-2xx, a late 1xx or non-2xx after a
            // 2xx: nothing the RFC lets them change.
            (Completed | Accepted | Terminated, _) => {}
        }
    }

    /// The caller built the ACK asked for by [`Event::AckNeeded`]: it is
    /// sent now and again on every retransmission of the final response.
    pub fn send_ack(&mut self, now: Instant, ack: M) -> Result<(), TsxError> {
        // `now` is unused today; kept so every input takes the time.
        let _ = now;
        if self.state != ClientInviteState::Completed {
            return Err(TsxError::AckNotExpected { state: TsxState::ClientInvite(self.state) });
        }
        self.transmits.push_back(ack.clone());
        self.ack = Some(ack);
        Ok(())
    }

    /// The transport failed to send the INVITE or the ACK (§17.1.4): the TU
    /// is told and the transaction ends. In Accepted the transaction sends
    /// nothing, so the failure is the dialog's and only reported.
    pub fn handle_transport_error(&mut self, now: Instant) {
        let _ = now;
        match self.state {
            ClientInviteState::Terminated => {}
            ClientInviteState::Accepted => self.events.push_back(Event::TransportError),
            _ => {
                self.events.push_back(Event::TransportError);
                self.terminate();
            }
        }
    }

    /// Fires the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut fired = 0;
        while let Some(timer) = self.timers.pop_expired(now, &mut fired) {
            match timer {
                Timer::A if self.state == ClientInviteState::Calling => {
                    if let Some(request) = &self.request {
                        self.transmits.push_back(request.clone());
                    }
                    // §17.1.1.2: doubled each time, no cap; B ends it.
                    self.timer_a_interval = self.config.doubled(self.timer_a_interval, false);
                    self.timers.set(Timer::A, now + self.timer_a_interval);
                }
                Timer::B if self.state == ClientInviteState::Calling => {
                    self.events.push_back(Event::Timeout { timer: Timer::B });
                    self.terminate();
                }
                Timer::D if self.state == ClientInviteState::Completed => self.terminate(),
                Timer::M if self.state == ClientInviteState::Accepted => self.terminate(),
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

    /// When to call [`ClientInvite::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    fn terminate(&mut self) {
        self.state = ClientInviteState::Terminated;
        self.timers.stop_all();
        self.events.push_back(Event::Terminated);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Out, Run, ms, status};
    use super::*;

    fn calling(reliability: Reliability) -> Run<ClientInvite<&'static str>> {
        Run::new(|now| ClientInvite::new(now, TimerConfig::default(), reliability, "INVITE"))
    }

    #[test]
    fn timer_a_doubles_without_cap_until_timer_b() {
        let mut run = calling(Reliability::Unreliable);
        run.run_to_end();
        assert_eq!(run.sent_at(), [0, 500, 1_500, 3_500, 7_500, 15_500, 31_500].map(|t| (t, "INVITE")));
        assert_eq!(run.events_at(), [(32_000, Event::Timeout { timer: Timer::B }), (32_000, Event::Terminated)]);
        assert_eq!(run.machine.state(), ClientInviteState::Terminated);
    }

    #[test]
    fn reliable_transport_sends_once_and_times_out_on_b() {
        let mut run = calling(Reliability::Reliable);
        run.run_to_end();
        assert_eq!(run.sent_at(), [(0, "INVITE")]);
        assert_eq!(run.events_at()[0], (32_000, Event::Timeout { timer: Timer::B }));
    }

    #[test]
    fn provisional_stops_a_and_b() {
        let mut run = calling(Reliability::Unreliable);
        run.run_until(ms(600));
        run.input(|m, now| m.handle_response(now, status(180)));
        assert_eq!(run.machine.state(), ClientInviteState::Proceeding);
        assert_eq!(run.machine.poll_timeout(), None);
        assert_eq!(run.sent_at(), [(0, "INVITE"), (500, "INVITE")]);
        assert_eq!(run.events_at(), [(600, Event::Response { status: status(180) })]);
    }

    #[test]
    fn non_2xx_is_acked_and_retransmissions_resend_the_ack_until_timer_d() {
        let mut run = calling(Reliability::Unreliable);
        run.run_until(ms(100));
        run.input(|m, now| m.handle_response(now, status(486)));
        assert_eq!(run.machine.state(), ClientInviteState::Completed);
        assert_eq!(
            run.take_log(),
            [
                (0, Out::Sent("INVITE")),
                (100, Out::Event(Event::AckNeeded { status: status(486) })),
                (100, Out::Event(Event::Response { status: status(486) })),
            ]
        );
        run.input(|m, now| m.send_ack(now, "ACK").unwrap());
        run.run_until(ms(5_000));
        run.input(|m, now| m.handle_response(now, status(486)));
        run.run_to_end();
        assert_eq!(
            run.take_log(),
            [
                (100, Out::Sent("ACK")),
                // The retransmitted 486 is absorbed: ACK again, TU not told.
                (5_000, Out::Sent("ACK")),
                (32_100, Out::Event(Event::Terminated)),
            ]
        );
    }

    #[test]
    fn retransmitted_final_before_the_ack_was_built_asks_again() {
        let mut run = calling(Reliability::Unreliable);
        run.input(|m, now| m.handle_response(now, status(503)));
        run.input(|m, now| m.handle_response(now, status(503)));
        let asks = run.events_at().into_iter().filter(|(_, e)| matches!(e, Event::AckNeeded { .. })).count();
        assert_eq!(asks, 2);
    }

    #[test]
    fn timer_d_is_zero_on_reliable_transports() {
        let mut run = calling(Reliability::Reliable);
        run.run_until(ms(40));
        run.input(|m, now| m.handle_response(now, status(404)));
        run.input(|m, now| m.send_ack(now, "ACK").unwrap());
        assert_eq!(run.machine.poll_timeout(), Some(run.now));
        run.run_to_end();
        assert_eq!(run.machine.state(), ClientInviteState::Terminated);
        assert_eq!(run.events_at().last(), Some(&(40, Event::Terminated)));
    }

    #[test]
    fn accepted_passes_every_2xx_to_the_tu_until_timer_m() {
        let mut run = calling(Reliability::Unreliable);
        run.run_until(ms(200));
        run.input(|m, now| m.handle_response(now, status(183)));
        run.run_until(ms(2_000));
        run.input(|m, now| m.handle_response(now, status(200)));
        assert_eq!(run.machine.state(), ClientInviteState::Accepted);
        run.run_until(ms(2_500));
        // A 2xx retransmission (or another fork's): to the TU, no ACK here.
        run.input(|m, now| m.handle_response(now, status(200)));
        // A stray non-2xx in Accepted changes nothing.
        run.input(|m, now| m.handle_response(now, status(486)));
        run.run_to_end();
        assert_eq!(run.sent_at(), [(0, "INVITE")]);
        assert_eq!(
            run.events_at(),
            [
                (200, Event::Response { status: status(183) }),
                (2_000, Event::Response { status: status(200) }),
                (2_500, Event::Response { status: status(200) }),
                (34_000, Event::Terminated),
            ]
        );
    }

    #[test]
    fn ack_outside_completed_is_refused() {
        let mut run = calling(Reliability::Unreliable);
        let refused = run.machine.send_ack(run.now, "ACK");
        assert_eq!(
            refused,
            Err(TsxError::AckNotExpected { state: TsxState::ClientInvite(ClientInviteState::Calling) })
        );
    }

    #[test]
    fn transport_error_terminates_except_in_accepted() {
        let mut run = calling(Reliability::Reliable);
        run.input(|m, now| m.handle_transport_error(now));
        assert_eq!(run.events_at(), [(0, Event::TransportError), (0, Event::Terminated)]);

        let mut run = calling(Reliability::Reliable);
        run.input(|m, now| m.handle_response(now, status(200)));
        run.input(|m, now| m.handle_transport_error(now));
        assert_eq!(run.machine.state(), ClientInviteState::Accepted);
    }
}
