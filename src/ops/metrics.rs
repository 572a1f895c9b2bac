//! Metric names and the few helpers that record them, through the
//! `metrics` facade. The exporter (Prometheus) is wired in the binary by the
//! operations work; without one, recording is a no-op.

/// Calls admitted (a channel taken), by trunk.
pub const CALLS_ADMITTED: &str = "trunkgate_calls_admitted_total";
/// Calls refused, by `reason` (the stable tokens of `admission::Reason`).
pub const CALLS_REFUSED: &str = "trunkgate_calls_refused_total";
/// Admitted calls that ended, by `outcome` (completed, cancelled, busy…).
pub const CALLS_ENDED: &str = "trunkgate_calls_ended_total";
/// Registrations refused or failed, by `reason`.
pub const REGISTER_FAILURES: &str = "trunkgate_register_failures_total";

/// UDP datagrams a SIP core dropped because its send thread held too many
/// unsent (starved of CPU): loss as in a full socket buffer.
pub const UDP_SEND_DROPPED: &str = "trunkgate_udp_send_dropped_total";

/// Counts datagrams dropped unsent.
pub fn udp_send_dropped(n: usize) {
    metrics::counter!(UDP_SEND_DROPPED).increment(u64::try_from(n).unwrap_or(u64::MAX));
}

/// Counts a refused call under its reason token.
pub fn call_refused(reason: &str) {
    metrics::counter!(CALLS_REFUSED, "reason" => reason.to_owned()).increment(1);
}

/// Counts an admitted call.
pub fn call_admitted(trunk: &str) {
    metrics::counter!(CALLS_ADMITTED, "trunk" => trunk.to_owned()).increment(1);
}

/// Counts an admitted call's end.
pub fn call_ended(outcome: &str) {
    metrics::counter!(CALLS_ENDED, "outcome" => outcome.to_owned()).increment(1);
}

/// Counts a failed or refused registration.
pub fn register_failed(reason: &str) {
    metrics::counter!(REGISTER_FAILURES, "reason" => reason.to_owned()).increment(1);
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    #[test]
    fn refusals_are_counted_by_reason_label() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            call_refused("channels-busy");
            call_refused("channels-busy");
            call_refused("not-licensed");
            call_admitted("acme-pbx");
        });
        type Counted = (String, Vec<(String, String)>, u64);
        let counts: Vec<Counted> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| match value {
                DebugValue::Counter(n) => Some((
                    key.key().name().to_owned(),
                    key.key().labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect(),
                    n,
                )),
                _ => None,
            })
            .collect();
        let find = |name: &str, label: &str| {
            counts.iter().find(|(n, l, _)| n == name && l.iter().any(|(_, v)| v == label)).map(|(_, _, c)| *c)
        };
        assert_eq!(find(CALLS_REFUSED, "channels-busy"), Some(2));
        assert_eq!(find(CALLS_REFUSED, "not-licensed"), Some(1));
        assert_eq!(find(CALLS_ADMITTED, "acme-pbx"), Some(1));
    }

    #[test]
    fn dropped_datagrams_are_counted_one_by_one() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            udp_send_dropped(12);
            udp_send_dropped(3);
        });
        let dropped: Vec<u64> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == UDP_SEND_DROPPED)
            .filter_map(|(.., value)| match value {
                DebugValue::Counter(n) => Some(n),
                _ => None,
            })
            .collect();
        assert_eq!(dropped, [15]);
    }
}
